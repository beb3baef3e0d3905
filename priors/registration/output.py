"""Files a registration leaves behind: the ITK transform and a checkerboard PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["TRANSFORM_SUFFIXES", "read_transform", "write_overlay_png", "write_transform"]

# Suffixes of ITK's text (.tfm, .txt) and HDF5 (.h5, .hdf5) transform files.
TRANSFORM_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5")

# Display window of each volume: its own 1st and 99th intensity percentiles, so that
# a few bright voxels (metal, vessels in MR) do not darken everything else.
WINDOW_PERCENTILES = (1.0, 99.0)

# Checkerboard tiles along the longer side of each panel.
CHECKER_TILES = 8

# Voxels, at most, from which the display window of a volume is computed.
WINDOW_SAMPLES = 1_000_000


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in TRANSFORM_SUFFIXES:
        raise ValueError(
            f"{path}: transform file suffix {path.suffix!r} is not supported, "
            f"expected one of {', '.join(TRANSFORM_SUFFIXES)}"
        )


def write_transform(transform: sitk.Transform, path: str | os.PathLike[str]) -> Path:
    """Write an ITK transform file (text ``.tfm`` or HDF5 ``.h5``) and return its path.

    The file stores the transform that maps current points to prior points, the
    direction in which ITK registrations write their results.
    """
    path = Path(path)
    _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteTransform(transform, str(path))
    return path


def read_transform(path: str | os.PathLike[str]) -> sitk.Transform:
    """Read a transform written by ``write_transform``, as its concrete ITK class."""
    path = Path(path)
    _check_suffix(path)
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as err:
        raise ValueError(f"{path}: failed to read ITK transform: {err}") from err
    return transform.Downcast()


def _mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    # After orienting to LPS the array axes are (S, P, L), each index growing towards
    # superior, posterior and left. Axial rows then run anterior to posterior, as
    # radiology viewers show them. Coronal and sagittal rows are flipped so that
    # superior is up.
    k, j, i = (n // 2 for n in volume.shape)
    return [volume[k], volume[:, j, :][::-1, :], volume[:, :, i][::-1, :]]


def _window_limits(volume: np.ndarray) -> tuple[float, float]:
    # Percentiles of an evenly strided subset: sorting all 52 M voxels of a large CT
    # took seconds, and the preview's grey levels do not need more precision.
    step = max(1, volume.size // WINDOW_SAMPLES)
    low, high = np.percentile(volume.ravel()[::step], WINDOW_PERCENTILES)
    return float(low), float(high)


def _window(values: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    low, high = limits
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)


def _oriented_lps(image: sitk.Image) -> sitk.Image:
    # DICOMOrient copies the volume even when it is already LPS (0.1 s for a
    # 512 x 512 x 200 CT).
    if image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0):
        return image
    return sitk.DICOMOrient(image, "LPS")


def _checkerboard(shape: tuple[int, int]) -> np.ndarray:
    tile = max(1, max(shape) // CHECKER_TILES)
    rows = np.arange(shape[0])[:, None] // tile
    cols = np.arange(shape[1])[None, :] // tile
    return (rows + cols) % 2 == 0


def write_overlay_png(
    current: sitk.Image,
    registered_prior: sitk.Image,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    dpi: int = 80,
) -> Path:
    """Write a checkerboard of current and registered prior on three mid-slices.

    Panels are axial, coronal and sagittal through the centre of the current volume,
    after reorienting both to LPS. Tiles alternate between the two volumes, each
    windowed on its own intensities, so a misregistration shows as broken edges at
    tile borders.

    Parameters
    ----------
    current
        The current volume.
    registered_prior
        The prior on the current grid (``resample_onto``).
    path
        PNG file to write; its folder is created.
    title
        Figure title, for example the pair's UIDs. Never put identifying values here.
    dpi
        Resolution; the default gives a PNG of about 720 x 270 pixels.

    Returns
    -------
    pathlib.Path
    """
    # Matplotlib is imported here so that importing priors.registration stays cheap.
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if current.GetSize() != registered_prior.GetSize():
        raise ValueError(
            f"registered prior has size {registered_prior.GetSize()}, expected the "
            f"current size {current.GetSize()}: resample it onto the current grid first"
        )
    # The oriented images stay bound to names while their array views are in use.
    current_lps = _oriented_lps(current)
    prior_lps = _oriented_lps(registered_prior)
    fixed = sitk.GetArrayViewFromImage(current_lps)
    moving = sitk.GetArrayViewFromImage(prior_lps)
    limits = _window_limits(fixed), _window_limits(moving)
    spacing_lps = current_lps.GetSpacing()
    # Pixel aspect (height / width) of each panel: axial P/L, coronal S/L, sagittal S/P.
    aspects = [
        spacing_lps[1] / spacing_lps[0],
        spacing_lps[2] / spacing_lps[0],
        spacing_lps[2] / spacing_lps[1],
    ]

    figure = Figure(figsize=(9, 3.4), dpi=dpi)
    axes = figure.subplots(1, 3)
    names = ("axial", "coronal", "sagittal")
    for ax, a, b, aspect, name in zip(
        axes, _mid_slices(fixed), _mid_slices(moving), aspects, names, strict=True
    ):
        a, b = a.astype(np.float32), b.astype(np.float32)
        board = np.where(_checkerboard(a.shape), _window(a, limits[0]), _window(b, limits[1]))
        ax.imshow(board, cmap="gray", aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
