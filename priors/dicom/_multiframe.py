"""Frames of enhanced multi-frame images, with geometry from the functional groups."""

from __future__ import annotations

from pydicom.dataset import Dataset

from priors.dicom._volume_frames import (
    Frame,
    FrameReadError,
    Instance,
    common_fields,
    float_values,
    number_or,
)

__all__ = ["enhanced_frames"]

# Frame type sequences of the enhanced IODs, one of which carries (0008,9007) Frame Type.
_FRAME_TYPE_SEQUENCES = (
    "MRImageFrameTypeSequence",
    "CTImageFrameTypeSequence",
    "PETFrameTypeSequence",
    "XAXRFFrameCharacteristicsSequence",
)


def _macro(per_frame: Dataset, shared: Dataset | None, keyword: str) -> Dataset | None:
    """Return the first item of a functional group macro, per-frame before shared."""
    for group in (per_frame, shared):
        if group is not None and keyword in group and len(group[keyword].value) > 0:
            return group[keyword].value[0]
    return None


def _frame_type(per_frame: Dataset, shared: Dataset | None, ds: Dataset) -> tuple[str, ...]:
    for keyword in _FRAME_TYPE_SEQUENCES:
        item = _macro(per_frame, shared, keyword)
        if item is not None and "FrameType" in item:
            values = tuple(str(v) for v in item.FrameType)
            if "ComplexImageComponent" in item:
                values += (str(item.ComplexImageComponent),)
            return values
    return tuple(str(v) for v in ds.get("ImageType", []))


def enhanced_frames(instance: Instance) -> list[Frame]:
    """Read every frame of an enhanced multi-frame image (PS3.3 C.7.6.16).

    Position, orientation, pixel spacing and rescale come from the Per-frame Functional
    Groups Sequence, falling back to the Shared Functional Groups Sequence, and then to
    the top-level Rescale Slope and Intercept.
    """
    ds, path = instance.dataset, instance.path
    common = common_fields(ds, path)
    shared_items = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else None
    per_frame_items = ds.PerFrameFunctionalGroupsSequence
    declared = int(ds.get("NumberOfFrames", 1) or 1)
    if len(per_frame_items) != declared:
        raise FrameReadError(
            f"{path}: (5200,9230) Per-frame Functional Groups Sequence has "
            f"{len(per_frame_items)} items, expected (0028,0008) Number of Frames {declared}"
        )

    frames = []
    for index, per_frame in enumerate(per_frame_items):
        where = f"frame {index + 1}"
        position_item = _macro(per_frame, shared, "PlanePositionSequence")
        orientation_item = _macro(per_frame, shared, "PlaneOrientationSequence")
        measures_item = _macro(per_frame, shared, "PixelMeasuresSequence")
        if position_item is None or orientation_item is None or measures_item is None:
            raise FrameReadError(
                f"{path}: {where} lacks a Plane Position, Plane Orientation or Pixel Measures "
                "functional group, expected all three"
            )
        position = float_values(
            position_item.get("ImagePositionPatient"),
            3,
            path=path,
            tag=f"{where} (0020,0032) Image Position (Patient)",
        )
        orientation = float_values(
            orientation_item.get("ImageOrientationPatient"),
            6,
            path=path,
            tag=f"{where} (0020,0037) Image Orientation (Patient)",
        )
        spacing = float_values(
            measures_item.get("PixelSpacing"),
            2,
            path=path,
            tag=f"{where} (0028,0030) Pixel Spacing",
        )

        transform = _macro(per_frame, shared, "PixelValueTransformationSequence") or ds
        content = _macro(per_frame, shared, "FrameContentSequence")
        echo_item = _macro(per_frame, shared, "MREchoSequence")
        temporal_index = content.get("TemporalPositionIndex") if content is not None else None
        acquisition = content.get("FrameAcquisitionNumber") if content is not None else None
        trigger_item = _macro(per_frame, shared, "CardiacSynchronizationSequence")
        trigger = trigger_item.get("NominalCardiacTriggerDelayTime") if trigger_item else None
        frames.append(
            Frame(
                instance=instance,
                frame_index=index,
                image_position_patient=position,
                image_orientation_patient=orientation,
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                rescale_slope=number_or(transform.get("RescaleSlope"), 1.0),
                rescale_intercept=number_or(transform.get("RescaleIntercept"), 0.0),
                echo=str(echo_item.get("EffectiveEchoTime", "")) if echo_item else "",
                image_type=_frame_type(per_frame, shared, ds),
                temporal_key=(
                    number_or(temporal_index, -1.0),
                    number_or(trigger, -1.0),
                    number_or(acquisition, -1.0),
                ),
                stack_id=str(content.get("StackID", "")) if content is not None else "",
                **common,
            )
        )
    return frames
