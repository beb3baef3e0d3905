"""Siemens mosaic images: the tiles of one stored image unpacked into slices.

A mosaic stores the slices of one volume as tiles of a single 2-D image, with one
(0020,0032) Image Position (Patient) for the whole mosaic. The tile count is in
(0019,100A) NumberOfImagesInMosaic or the CSA image header, and the slice direction in
the CSA header's SliceNormalVector. CSA headers are Siemens' private (0029,1010) element
in the "SV10" layout.
"""

from __future__ import annotations

import math
import struct

import numpy as np
from pydicom.dataset import Dataset

from priors.dicom._volume_frames import (
    Frame,
    FrameReadError,
    Instance,
    common_fields,
    float_values,
    number_or,
    temporal_key,
)

__all__ = ["is_mosaic", "mosaic_frames", "read_csa_header"]

_CSA_IMAGE_HEADER = (0x0029, 0x1010)
_IMAGES_IN_MOSAIC = (0x0019, 0x100A)
# Real CSA image headers contain about 100 tags, so a count above this means corrupt data.
_CSA_TAG_COUNT_LIMIT = 1000


def is_mosaic(ds: Dataset) -> bool:
    """Return whether (0008,0008) Image Type marks a Siemens mosaic."""
    return "MOSAIC" in [str(v).upper() for v in ds.get("ImageType", [])]


def read_csa_header(data: bytes) -> dict[str, list[str]]:
    """Parse a Siemens CSA header in the "SV10" layout into name -> item strings.

    Raises
    ------
    ValueError
        When the data is not an SV10 header or ends inside a tag.
    """
    if data[:4] != b"SV10":
        raise ValueError(f"CSA header starts with {data[:4]!r}, expected b'SV10'")
    (tag_count,) = struct.unpack_from("<I", data, 8)
    if tag_count > _CSA_TAG_COUNT_LIMIT:
        raise ValueError(f"CSA header declares {tag_count} tags, expected at most 1000")

    offset = 16
    tags: dict[str, list[str]] = {}
    for _ in range(tag_count):
        name = data[offset : offset + 64].split(b"\0", 1)[0].decode("latin-1")
        (item_count,) = struct.unpack_from("<i", data, offset + 76)
        offset += 84
        items = []
        for _ in range(item_count):
            (length,) = struct.unpack_from("<i", data, offset)
            start = offset + 16
            if start + length > len(data):
                raise ValueError(f"CSA tag {name!r} runs past the end of the header")
            text = data[start : start + length].split(b"\0", 1)[0].decode("latin-1").strip()
            items.append(text)
            offset = start + 4 * math.ceil(length / 4)
        tags[name] = [item for item in items if item]
    return tags


def _csa_numbers(tags: dict[str, list[str]], name: str) -> list[float]:
    return [float(v) for v in tags.get(name, [])]


def mosaic_frames(instance: Instance) -> list[Frame]:
    """Unpack a mosaic into one frame per tile, in acquisition order.

    Tile k lies ``k * spacing`` along SliceNormalVector from the first tile, where spacing
    is (0018,0088) Spacing Between Slices (or else (0018,0050) Slice Thickness), because
    the mosaic stores no position per tile.
    """
    ds, path = instance.dataset, instance.path
    if _CSA_IMAGE_HEADER not in ds:
        raise FrameReadError(f"{path}: mosaic without (0029,1010) CSA Image Header Info")
    try:
        csa = read_csa_header(bytes(ds[_CSA_IMAGE_HEADER].value))
    except (ValueError, struct.error) as err:
        raise FrameReadError(
            f"{path}: (0029,1010) CSA Image Header Info is invalid: {err}"
        ) from err

    count = int(number_or(ds[_IMAGES_IN_MOSAIC].value, 0)) if _IMAGES_IN_MOSAIC in ds else 0
    if count == 0 and csa.get("NumberOfImagesInMosaic"):
        count = int(number_or(csa["NumberOfImagesInMosaic"][0], 0))
    normal = np.array(_csa_numbers(csa, "SliceNormalVector"))
    if count < 1 or normal.shape != (3,):
        raise FrameReadError(
            f"{path}: mosaic lacks NumberOfImagesInMosaic ({count} found) or a 3-value "
            f"SliceNormalVector ({normal.tolist()} found) in its CSA header"
        )
    per_side = math.ceil(math.sqrt(count))
    common = common_fields(ds, path)
    mosaic_rows, mosaic_columns = common["rows"], common["columns"]
    if mosaic_rows % per_side or mosaic_columns % per_side:
        raise FrameReadError(
            f"{path}: (0028,0010) Rows {mosaic_rows} and (0028,0011) Columns "
            f"{mosaic_columns} do not divide into {per_side} x {per_side} tiles"
        )
    tile_rows, tile_columns = mosaic_rows // per_side, mosaic_columns // per_side
    common["rows"], common["columns"] = tile_rows, tile_columns

    mosaic_position = float_values(
        ds.get("ImagePositionPatient"), 3, path=path, tag="(0020,0032) Image Position (Patient)"
    )
    orientation = float_values(
        ds.get("ImageOrientationPatient"),
        6,
        path=path,
        tag="(0020,0037) Image Orientation (Patient)",
    )
    row_spacing, column_spacing = float_values(
        ds.get("PixelSpacing"), 2, path=path, tag="(0028,0030) Pixel Spacing"
    )
    step = abs(number_or(ds.get("SpacingBetweenSlices"), 0.0)) or number_or(
        ds.get("SliceThickness"), 0
    )
    if step <= 0:
        raise FrameReadError(
            f"{path}: mosaic has no positive (0018,0088) Spacing Between Slices or "
            "(0018,0050) Slice Thickness to place its tiles"
        )

    # The stored position is the corner of the whole mosaic. Every tile lies where a
    # tile-sized image centred in the mosaic's field of view would, so move to its corner.
    first = (
        mosaic_position
        + orientation[:3] * column_spacing * (mosaic_columns - tile_columns) / 2
        + orientation[3:] * row_spacing * (mosaic_rows - tile_rows) / 2
    )
    normal = normal / np.linalg.norm(normal)
    frames = []
    for index in range(count):
        row, column = divmod(index, per_side)
        tile = (
            slice(row * tile_rows, (row + 1) * tile_rows),
            slice(column * tile_columns, (column + 1) * tile_columns),
        )
        frames.append(
            Frame(
                instance=instance,
                frame_index=index,
                image_position_patient=first + index * step * normal,
                image_orientation_patient=orientation,
                pixel_spacing=(float(row_spacing), float(column_spacing)),
                rescale_slope=number_or(ds.get("RescaleSlope"), 1.0),
                rescale_intercept=number_or(ds.get("RescaleIntercept"), 0.0),
                echo=str(ds.get("EchoNumbers", "") or ""),
                image_type=tuple(str(v) for v in ds.get("ImageType", [])),
                temporal_key=temporal_key(ds),
                stack_id="",
                tile=tile,
                **common,
            )
        )
    return frames
