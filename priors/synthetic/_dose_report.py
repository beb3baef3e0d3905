"""Build the X-Ray Radiation Dose SR of one synthetic CT study.

The content tree is laid out as DICOM PS3.16 TID 10011 "CT Radiation Dose", with
one irradiation event (TID 10013) for the spiral scan. The localizer is not
reported as an event of its own.

NOTE: no DICOM validator (such as dciodvfy) was available, so template rows beyond
those the tests read may still be missing or misordered.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import XRayRadiationDoseSRStorage

from priors.synthetic._dicom_writer import (
    SeriesContext,
    StudyContext,
    common_attributes,
    make_uid,
)

# DCM codes missing from pydicom 3.0's code dictionary.
_MEAN_CTDIVOL = hd.sr.CodedConcept("113830", "DCM", "Mean CTDIvol")
_CTDIW_PHANTOM_TYPE = hd.sr.CodedConcept("113835", "DCM", "CTDIw Phantom Type")
_DLP = hd.sr.CodedConcept("113838", "DCM", "DLP")

_MGY = hd.sr.CodedConcept("mGy", "UCUM", "mGy")
_MGY_CM = hd.sr.CodedConcept("mGy.cm", "UCUM", "mGy.cm")
_EVENTS = hd.sr.CodedConcept("{events}", "UCUM", "events")
_SECONDS = hd.sr.CodedConcept("s", "UCUM", "s")
_MM = hd.sr.CodedConcept("mm", "UCUM", "mm")
_KV = hd.sr.CodedConcept("kV", "UCUM", "kV")
_MA = hd.sr.CodedConcept("mA", "UCUM", "mA")
_RATIO = hd.sr.CodedConcept("{ratio}", "UCUM", "ratio")
_SOURCES = hd.sr.CodedConcept("{X-Ray sources}", "UCUM", "X-Ray sources")

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
_OBSERVATION_CONTEXT = hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT


@dataclass(frozen=True)
class SpiralScan:
    """Acquisition figures of the one spiral irradiation event."""

    ctdi_vol_mgy: float
    dlp_mgy_cm: float
    scanning_length_mm: float
    kvp: float
    tube_current_ma: float
    exposure_time_s: float


def dose_report(study: StudyContext, series: SeriesContext, *, scan: SpiralScan) -> Dataset:
    """Build an X-Ray Radiation Dose SR Storage instance for one spiral CT scan."""
    sop_uid = make_uid(series.series_instance_uid, "sr", 1)
    ds = common_attributes(study, series, XRayRadiationDoseSRStorage, sop_uid)
    ds.Modality = "SR"
    ds.InstanceNumber = 1
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"

    # The document root is the TID 10011 container itself.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.XRayRadiationDoseReport)]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "10011"
    ds.ContentTemplateSequence = [template]

    start = dt.datetime.strptime(study.study_date + study.study_time, "%Y%m%d%H%M%S")
    end = start + dt.timedelta(seconds=series.seconds_after_study)
    scope = hd.sr.CodeContentItem(
        codes.DCM.ScopeOfAccumulation, codes.DCM.Study, _OBSERVATION_CONTEXT
    )
    scope.ContentSequence = Sequence(
        [
            hd.sr.UIDRefContentItem(
                codes.DCM.StudyInstanceUID,
                study.study_instance_uid,
                hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
            )
        ]
    )
    ds.ContentSequence = [
        hd.sr.CodeContentItem(
            codes.DCM.ProcedureReported,
            codes.SCT.ComputedTomography,
            hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        ),
        *_device_observer(study),
        hd.sr.DateTimeContentItem(codes.DCM.StartOfXRayIrradiation, start, _OBSERVATION_CONTEXT),
        hd.sr.DateTimeContentItem(codes.DCM.EndOfXRayIrradiation, end, _OBSERVATION_CONTEXT),
        scope,
        _container(
            codes.DCM.CTAccumulatedDoseData,
            _number(codes.DCM.TotalNumberOfIrradiationEvents, 1, _EVENTS),
            _number(codes.DCM.CTDoseLengthProductTotal, scan.dlp_mgy_cm, _MGY_CM),
        ),
        _irradiation_event(study, scan),
        hd.sr.CodeContentItem(
            codes.DCM.SourceOfDoseInformation, codes.DCM.AutomatedDataCollection, _CONTAINS
        ),
    ]
    return ds


def _device_observer(study: StudyContext) -> list[Dataset]:
    # TID 1002 Observer Context with a device observer (TID 1004): the scanner.
    site = study.site
    device_uid = make_uid("device", site.folder, study.device_serial_number)
    return [
        hd.sr.CodeContentItem(codes.DCM.ObserverType, codes.DCM.Device, _OBSERVATION_CONTEXT),
        hd.sr.UIDRefContentItem(codes.DCM.DeviceObserverUID, device_uid, _OBSERVATION_CONTEXT),
        hd.sr.TextContentItem(
            codes.DCM.DeviceObserverName, site.station_name, _OBSERVATION_CONTEXT
        ),
        hd.sr.TextContentItem(
            codes.DCM.DeviceObserverManufacturer, site.manufacturer, _OBSERVATION_CONTEXT
        ),
    ]


def _irradiation_event(study: StudyContext, scan: SpiralScan) -> Dataset:
    # TID 10013 CT Irradiation Event Data for the spiral acquisition.
    source = _container(
        codes.DCM.CTXRaySourceParameters,
        hd.sr.TextContentItem(codes.DCM.IdentificationOfTheXRaySource, "A", _CONTAINS),
        _number(codes.DCM.KVP, scan.kvp, _KV),
        _number(codes.DCM.MaximumXRayTubeCurrent, scan.tube_current_ma * 1.2, _MA),
        _number(codes.DCM.XRayTubeCurrent, scan.tube_current_ma, _MA),
        _number(codes.DCM.ExposureTimePerRotation, 0.5, _SECONDS),
    )
    parameters = _container(
        codes.DCM.CTAcquisitionParameters,
        _number(codes.DCM.ExposureTime, scan.exposure_time_s, _SECONDS),
        _number(codes.DCM.ScanningLength, scan.scanning_length_mm, _MM),
        _number(codes.DCM.NominalSingleCollimationWidth, 0.6, _MM),
        _number(codes.DCM.NominalTotalCollimationWidth, 38.4, _MM),
        _number(codes.DCM.PitchFactor, 1.0, _RATIO),
        _number(codes.DCM.NumberOfXRaySources, 1, _SOURCES),
        source,
    )
    dose = _container(
        codes.DCM.CTDose,
        _number(_MEAN_CTDIVOL, scan.ctdi_vol_mgy, _MGY),
        hd.sr.CodeContentItem(_CTDIW_PHANTOM_TYPE, codes.DCM.IECBodyDosimetryPhantom, _CONTAINS),
        _number(_DLP, scan.dlp_mgy_cm, _MGY_CM),
    )
    return _container(
        codes.DCM.CTAcquisition,
        hd.sr.TextContentItem(
            codes.DCM.AcquisitionProtocol, study.site.study_description, _CONTAINS
        ),
        hd.sr.CodeContentItem(codes.DCM.TargetRegion, codes.SCT.Chest, _CONTAINS),
        hd.sr.CodeContentItem(codes.DCM.CTAcquisitionType, codes.SCT.SpiralAcquisition, _CONTAINS),
        hd.sr.UIDRefContentItem(
            codes.DCM.IrradiationEventUID,
            make_uid(study.study_instance_uid, "irradiation-event", 1),
            _CONTAINS,
        ),
        parameters,
        dose,
    )


def _number(
    name: Code | hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept
) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=value, unit=unit, relationship_type=_CONTAINS)


def _container(name: Code | hd.sr.CodedConcept, *items: Dataset) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=name, relationship_type=_CONTAINS)
    container.ContentSequence = Sequence(items)
    return container
