"""Loading a MONAI change-detection bundle and running it on a registered pair.

``torch`` and ``monai`` are imported inside the functions, so importing this module
stays cheap for the command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from priors.change.lesions import remove_small_components
from priors.change.output import NEW_OR_GROWN, RESOLVED_OR_SHRUNK, ChangeOutput
from priors.change.preprocessing import stack_inputs

__all__ = ["ChangeModel", "load_change_model", "resolve_device", "sha256_file"]

logger = logging.getLogger(__name__)

# Input spacing within 5 % of the bundle's spacing is used as is. Beyond that the pair
# is resampled, because the network saw lesions only at its training resolution.
SPACING_TOLERANCE = 0.05


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str) -> str:
    """Return ``device``, with ``"auto"`` replaced by ``"cuda"`` when available, else ``"cpu"``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ChangeModel:
    """A loaded change-detection bundle, ready to predict on registered pairs.

    Attributes
    ----------
    name, version
        From the bundle's ``metadata.json``.
    weights_sha256
        Hex SHA-256 of ``models/model.pt``.
    bundle_dir
        The bundle folder.
    device
        Torch device the network runs on.
    metadata
        The bundle's ``metadata.json``.
    """

    def __init__(
        self,
        *,
        bundle_dir: Path,
        metadata: dict,
        config: dict[str, Any],
        network: Any,
        inferer: Any,
        weights_sha256: str,
        device: str,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.metadata = metadata
        self.name = str(metadata.get("name", bundle_dir.name))
        self.version = str(metadata.get("version", ""))
        self.weights_sha256 = weights_sha256
        self.device = device
        self._config = config
        self._network = network
        self._inferer = inferer

    def __repr__(self) -> str:
        return f"ChangeModel(name={self.name!r}, version={self.version!r}, device={self.device!r})"

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size ``(sx, sy, sz)`` in mm that the network was trained at."""
        return tuple(float(s) for s in self._config["spacing_mm"])

    def in_scope(self, *, modality: str, body_part: str) -> tuple[bool, str]:
        """Tell whether a pair's modality and body part are ones the model was trained for.

        Returns
        -------
        tuple
            ``(True, "")``, or ``(False, reason)`` with a reason such as
            ``"model not applicable: trained for CT CHEST, pair is MR LSPINE"``.
        """
        scope = self.metadata.get("scope", {})
        modalities = [m.upper() for m in scope.get("modalities", [])]
        regions = [r.upper() for r in scope.get("body_regions", [])]
        modality_found = (modality or "").strip().upper()
        region_found = (body_part or "").strip().upper()
        if modality_found in modalities and region_found in regions:
            return True, ""
        trained = f"{'/'.join(modalities) or '?'} {'/'.join(regions) or '?'}"
        pair = f"{modality_found or '(no modality)'} {region_found or '(no body part)'}"
        return False, f"model not applicable: trained for {trained}, pair is {pair}"

    def predict(
        self, current: np.ndarray, prior: np.ndarray, *, spacing: Sequence[float]
    ) -> ChangeOutput:
        """Run sliding-window inference on one registered pair.

        Parameters
        ----------
        current, prior
            (z, y, x) CT volumes in HU on the same grid, the prior registered.
        spacing
            Voxel size ``(sx, sy, sz)`` in mm.

        Returns
        -------
        ChangeOutput
            Maps on the input grid; the pair is resampled to the bundle's spacing
            for inference when its spacing differs by more than 5 %.

        Raises
        ------
        ValueError
            When the volumes are not 3-D or differ in shape.
        """
        import torch

        current = np.asarray(current)
        prior = np.asarray(prior)
        if current.ndim != 3 or current.shape != prior.shape:
            raise ValueError(
                f"current shape {current.shape} and prior shape {prior.shape}: "
                "expected two 3-D (z, y, x) volumes of the same shape"
            )
        spacing = tuple(float(s) for s in spacing)
        original_shape = current.shape
        target = self.spacing_mm
        zoom = tuple(s / t for s, t in zip(spacing[::-1], target[::-1], strict=True))
        resample = any(abs(f - 1.0) > SPACING_TOLERANCE for f in zoom)
        if resample:
            current = ndimage.zoom(current.astype(np.float32), zoom, order=1)
            prior = ndimage.zoom(prior.astype(np.float32), zoom, order=1)

        inputs = stack_inputs(current, prior, self._config["preprocessing"])
        batch = torch.from_numpy(inputs[None]).to(self.device)
        with torch.inference_mode():
            logits = self._inferer(batch, self._network)
            probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
        if resample:
            probabilities = np.stack([_resize(p, original_shape) for p in probabilities])
        return self._postprocess(probabilities, spacing=spacing, resampled=resample)

    def _postprocess(
        self, probabilities: np.ndarray, *, spacing: tuple[float, ...], resampled: bool
    ) -> ChangeOutput:
        post = self._config["postprocessing"]
        threshold = float(post["change_threshold"])
        change = (1.0 - probabilities[0]).astype(np.float32)
        labels = np.zeros(change.shape, dtype=np.uint8)
        is_change = change >= threshold
        grown = probabilities[1] >= probabilities[2]
        labels[is_change & grown] = NEW_OR_GROWN
        labels[is_change & ~grown] = RESOLVED_OR_SHRUNK
        labels = remove_small_components(
            labels, spacing=spacing, min_volume_mm3=float(post["min_volume_mm3"])
        )
        parameters = {
            "change_threshold": threshold,
            "min_volume_mm3": float(post["min_volume_mm3"]),
            "roi_size": list(self._config["roi_size"]),
            "overlap": float(self._config["overlap"]),
            "sw_batch_size": int(self._config["sw_batch_size"]),
            "preprocessing": dict(self._config["preprocessing"]),
            "model_spacing_mm": list(self.spacing_mm),
            "input_spacing_mm": list(spacing),
            "resampled": resampled,
            "device": self.device,
            "model_name": self.name,
            "model_version": self.version,
            "weights_sha256": self.weights_sha256,
        }
        return ChangeOutput(
            probability=change, labels=labels, method="model", parameters=parameters
        )


def _resize(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resample ``volume`` linearly onto ``shape``."""
    target = tuple(int(s) for s in shape)
    factors = [t / s for t, s in zip(target, volume.shape, strict=True)]
    resized = ndimage.zoom(volume, factors, order=1, grid_mode=True, mode="nearest")
    # zoom can miss the target by one voxel on an axis, so crop or edge-pad to it.
    resized = resized[tuple(slice(0, t) for t in target)]
    padding = [(0, t - s) for t, s in zip(target, resized.shape, strict=True)]
    return np.pad(resized, padding, mode="edge")


def load_change_model(
    bundle_dir: str | Path, *, device: str = "auto", torch_threads: int = 0
) -> ChangeModel:
    """Load a change-detection MONAI bundle.

    Parameters
    ----------
    bundle_dir
        Folder with ``configs/metadata.json``, ``configs/inference.json`` and
        ``models/model.pt``.
    device
        Torch device; ``"auto"`` picks ``"cuda"`` when available, else ``"cpu"``.
    torch_threads
        Intra-op threads for torch on the CPU; 0 leaves torch's default.

    Raises
    ------
    FileNotFoundError
        When a bundle file is missing.
    ValueError
        When the weights do not fit the network the configuration defines.
    """
    import torch
    from monai.bundle import ConfigParser

    bundle_dir = Path(bundle_dir)
    paths = {
        "metadata": bundle_dir / "configs" / "metadata.json",
        "inference": bundle_dir / "configs" / "inference.json",
        "weights": bundle_dir / "models" / "model.pt",
    }
    for role, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {role} file of the change bundle not found")
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    device = resolve_device(device)

    metadata = json.loads(paths["metadata"].read_text(encoding="utf-8"))
    parser = ConfigParser()
    parser.read_config(paths["inference"])
    network = parser.get_parsed_content("network_def")
    inferer = parser.get_parsed_content("inferer")
    config = {
        key: parser.get_parsed_content(key)
        for key in (
            "spacing_mm",
            "roi_size",
            "overlap",
            "sw_batch_size",
            "preprocessing",
            "postprocessing",
        )
    }

    weights_sha256 = sha256_file(paths["weights"])
    state = torch.load(paths["weights"], map_location=device, weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{paths['weights']}: weights do not fit network_def of {paths['inference']}: {err}"
        ) from err
    network.to(device).eval()
    logger.info(
        "loaded change model %s %s on %s (weights sha256 %s)",
        metadata.get("name"),
        metadata.get("version"),
        device,
        weights_sha256[:12],
    )
    return ChangeModel(
        bundle_dir=bundle_dir,
        metadata=metadata,
        config=config,
        network=network,
        inferer=inferer,
        weights_sha256=weights_sha256,
        device=device,
    )
