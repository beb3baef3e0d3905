"""Classify a series for matching: orientation, MR weighting, kernel, contrast, usability.

Every classifier returns the class and the attribute values that decided it, so that
the selection can state why it chose or rejected a series.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from priors.longitudinal.types import SeriesInfo

__all__ = [
    "VOLUME_SOP_CLASSES",
    "Classified",
    "contrast_phase",
    "kernel_class",
    "mr_weighting",
    "orientation_class",
    "thickness_class",
    "unusable_reason",
]

# Cross-sectional image storage SOP classes that can make a volume (PS3.4 Annex B.5).
VOLUME_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}
# SOP class roots that are never a volume, with the name used in reasons. A root
# matches itself and every UID below it; the first match names the class.
_NON_VOLUME_ROOTS = (
    ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture"),
    ("1.2.840.10008.5.1.4.1.1.11", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.88.67", "X-Ray Radiation Dose SR"),
    ("1.2.840.10008.5.1.4.1.1.88.68", "Radiopharmaceutical Radiation Dose SR"),
    ("1.2.840.10008.5.1.4.1.1.88", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.1", "projection radiograph"),
    ("1.2.840.10008.5.1.4.1.1.12", "X-ray angiography projection"),
    ("1.2.840.10008.5.1.4.1.1.104", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.66", "raw data or spatial object"),
    ("1.2.840.10008.5.1.4.1.1.481", "radiotherapy object"),
)
# Image Type values (third and later) that mark a derived view, not an acquisition.
DERIVED_VIEW_TYPES = frozenset(
    {
        "LOCALIZER",
        "MIP",
        "MINIP",
        "MPR",
        "CPR",
        "CURVED",
        "REFORMATTED",
        "PROJECTION IMAGE",
        "PROJECTION",
        "VOLUME RENDERING",
        "VR",
        "SSD",
        "SCREEN SAVE",
        "CSA MPR",
        "CSAPARALLEL",
        "CSA RESAMPLED",
        "SUBTRACTION",
        "DOSE INFO",
        "SCOUT",
        "SURVEY",
    }
)
_DERIVED_VIEW_WORDS = re.compile(
    r"\b(mip|minip|mpr|reformat\w*|recon(struction)? 3d|3d rendering|vrt?|localizer|localiser|"
    r"scout|survey|topogram|scanogram|surview|3[- ]?plane|tri[- ]?pilot|dose report|"
    r"screen ?save|patient protocol)\b",
    re.IGNORECASE,
)
# A volume needs at least this many slices; a short stack is a locator or a single view.
MIN_VOLUME_SLICES = 6
# A normal further than this from every patient axis makes a plane oblique (degrees).
OBLIQUE_ANGLE_DEGREES = 30.0
# Slices at most this thick are "thin" (mm). Thin lung or bone reconstructions run
# from 0.5 to 2.5 mm depending on the scanner generation, thick reading series from
# 5 mm up, so the split sits between the two.
THIN_SLICE_MM = 3.0
# MR weighting from TR and TE (ms) when the description names none. The limits are
# the usual spin-echo ranges at 0.3 to 3 T.
T1_MAX_TR_MS = 1000.0
T1_MAX_TE_MS = 30.0
T2_MIN_TR_MS = 1500.0
T2_MIN_TE_MS = 70.0
PD_MAX_TE_MS = 40.0
# CT kernels whose number is at least this are sharp (Siemens B/I/H/Br/Hr, Toshiba FC
# and Canon numbering both put lung and bone kernels from 50 up).
SHARP_KERNEL_NUMBER = 50


@dataclass(frozen=True)
class Classified:
    """A class label and the attribute values behind it."""

    label: str
    basis: str
    values: dict[str, Any]


def orientation_class(series: SeriesInfo) -> Classified:
    """Classify the slice plane as axial, sagittal, coronal or oblique from its normal."""
    orientation = series.image_orientation_patient
    if orientation is None:
        return Classified("unknown", "no Image Orientation (Patient)", {})
    r, c = orientation[:3], orientation[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    length = math.sqrt(sum(v * v for v in normal)) or 1.0
    axis = max(range(3), key=lambda k: abs(normal[k]))
    angle = math.degrees(math.acos(min(1.0, abs(normal[axis]) / length)))
    values = {
        "normal_lps": tuple(round(v / length, 4) for v in normal),
        "angle_deg": round(angle, 1),
    }
    if angle > OBLIQUE_ANGLE_DEGREES:
        return Classified("oblique", f"normal {angle:.1f} deg from the nearest axis", values)
    label = ("sagittal", "coronal", "axial")[axis]
    return Classified(label, f"normal {angle:.1f} deg from the {'LPS'[axis]} axis", values)


def mr_weighting(series: SeriesInfo) -> Classified:
    """Return the MR contrast weighting from the description, else from TR and TE."""
    text = f"{series.series_description}".upper()
    patterns = (
        ("STIR", r"STIR"),
        ("FLAIR", r"FLAIR"),
        ("DWI", r"\bDWI\b|DIFFUSION|\bB ?\d{3,4}\b|TRACE"),
        ("ADC", r"\bADC\b"),
        ("T2*", r"T2\*|T2STAR|\bGRE\b|SWI|\bHEMO"),
        ("PD", r"\bPD\b|PROTON"),
        ("T1", r"T1"),
        ("T2", r"T2"),
    )
    for label, pattern in patterns:
        if re.search(pattern, text):
            return Classified(label, "series description", {"series_description": text})
    tr, te = series.repetition_time, series.echo_time
    values = {"repetition_time_ms": tr, "echo_time_ms": te}
    if tr is None or te is None:
        return Classified("", "no weighting in the description and no TR/TE", values)
    if tr <= T1_MAX_TR_MS and te <= T1_MAX_TE_MS:
        return Classified("T1", f"TR {tr:g} ms and TE {te:g} ms", values)
    if tr >= T2_MIN_TR_MS and te >= T2_MIN_TE_MS:
        return Classified("T2", f"TR {tr:g} ms and TE {te:g} ms", values)
    if tr >= T2_MIN_TR_MS and te <= PD_MAX_TE_MS:
        return Classified("PD", f"TR {tr:g} ms and TE {te:g} ms", values)
    return Classified("", f"TR {tr:g} ms and TE {te:g} ms fit no weighting", values)


def kernel_class(series: SeriesInfo) -> Classified:
    """Classify a CT reconstruction kernel as sharp or soft."""
    kernel = series.convolution_kernel.upper()
    description = series.series_description.upper()
    values = {"convolution_kernel": series.convolution_kernel}
    if kernel:
        if re.search(r"LUNG|BONE|SHARP|EDGE|DETAIL|HIGH|\bYA\b|\bYB\b|\bL\b|\bD\b|\bE\b", kernel):
            return Classified("sharp", "kernel name", values)
        if re.search(r"SOFT|STANDARD|\bSTD\b|SMOOTH|BRAIN|ABD|\bB\b|\bC\b|\bUB\b", kernel):
            return Classified("soft", "kernel name", values)
        number = re.search(r"(\d{2})", kernel)
        if number:
            label = "sharp" if int(number.group(1)) >= SHARP_KERNEL_NUMBER else "soft"
            return Classified(label, f"kernel number {number.group(1)}", values)
    if re.search(r"LUNG|BONE|HR ?CT|HIGH RES", description):
        return Classified("sharp", "series description", {"series_description": description})
    if re.search(r"SOFT|MEDIAST|STANDARD|\bSTD\b|ABD|BRAIN", description):
        return Classified("soft", "series description", {"series_description": description})
    return Classified("", "kernel not recognised", values)


def thickness_class(series: SeriesInfo) -> Classified:
    """Classify slices as thin or thick at :data:`THIN_SLICE_MM`."""
    thickness = series.slice_thickness or series.measured_slice_spacing
    if thickness is None:
        return Classified("", "no Slice Thickness", {})
    label = "thin" if thickness <= THIN_SLICE_MM else "thick"
    return Classified(label, f"{thickness:g} mm", {"slice_thickness_mm": thickness})


def contrast_phase(series: SeriesInfo) -> Classified:
    """Return ``pre``, ``post`` (or a named phase) or "" when unreadable."""
    text = series.series_description.upper()
    values = {
        "contrast_bolus_agent": series.contrast_bolus_agent,
        "series_description": series.series_description,
    }
    for label, pattern in (
        ("arterial", r"ARTERIAL|\bART\b"),
        ("portal venous", r"PORTAL|VENOUS|\bPV\b"),
        ("delayed", r"DELAY|LATE"),
    ):
        if re.search(pattern, text):
            return Classified(label, "series description", values)
    if re.search(r"\bPOST\b|\+ ?C\b|\bC ?\+|\bGD\b|GAD|\bKM\b|\bCE\b|CONTRAST|造影", text):
        return Classified("post", "series description", values)
    if re.search(r"\bPRE\b|NATIVE?|\bNAT\b|\bNC\b|NON[- ]?CON|WITHOUT|単純", text):
        return Classified("pre", "series description", values)
    if series.contrast_bolus_agent:
        return Classified("post", "Contrast/Bolus Agent present", values)
    return Classified("", "no contrast information", values)


def unusable_reason(
    series: SeriesInfo, *, min_slices: int = MIN_VOLUME_SLICES
) -> Classified | None:
    """Return why a series cannot be a volume for pairing, or None when it can.

    Images that another site re-imported often carry ``DERIVED\\SECONDARY`` although
    they are the original acquisition. Those two values alone do not reject a series:
    the SOP class, the acquisition attributes and the rest of Image Type decide.
    """
    values: dict[str, Any] = {
        "sop_class_uids": series.sop_class_uids,
        "image_type": "\\".join(series.image_type),
        "series_description": series.series_description,
    }
    for uid in series.sop_class_uids:
        for root, name in _NON_VOLUME_ROOTS:
            if uid == root or uid.startswith(root + "."):
                return Classified("excluded", f"{name} SOP class", values)
    unknown = [uid for uid in series.sop_class_uids if uid not in VOLUME_SOP_CLASSES]
    if unknown or not series.sop_class_uids:
        return Classified("excluded", "not a cross-sectional image SOP class", values)

    view_types = sorted(set(series.image_type[2:]) & DERIVED_VIEW_TYPES)
    if view_types:
        return Classified(
            "excluded", f"Image Type marks a derived view ({', '.join(view_types)})", values
        )
    word = _DERIVED_VIEW_WORDS.search(series.series_description)
    if word:
        return Classified(
            "excluded", f"series description names a derived view ({word.group(0)})", values
        )

    if series.image_type[:1] == ("DERIVED",) and not _has_acquisition_attributes(series):
        return Classified(
            "excluded", "DERIVED image without acquisition attributes (TR/TE, kernel, time)", values
        )

    slices = max(series.frame_count, series.instance_count)
    values.update(
        slices=slices,
        measured_slice_spacing_mm=series.measured_slice_spacing,
        coverage_mm=series.coverage_mm,
    )
    if slices < min_slices:
        return Classified(
            "locator",
            f"{slices} slices (fewer than {min_slices}) covering "
            f"{_mm(series.coverage_mm)}: a locator or single view, not a volume",
            values,
        )
    return None


def _has_acquisition_attributes(series: SeriesInfo) -> bool:
    if series.modality == "MR":
        return series.repetition_time is not None and series.echo_time is not None
    if series.modality == "CT":
        return bool(series.convolution_kernel) or bool(series.acquisition_time)
    return bool(series.acquisition_time)


def _mm(value: float | None) -> str:
    return "an unknown extent" if value is None else f"{value:.1f} mm"
