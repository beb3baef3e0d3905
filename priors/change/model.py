"""Loading a MONAI change-detection bundle and running it on a registered pair.

``torch`` and ``monai`` are imported inside the functions, so importing this module
stays cheap for the command line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from priors.change.output import ChangeOutput
from priors.change.postprocess import label_changes
from priors.change.preprocessing import stack_inputs

__all__ = ["ChangeModel", "load_change_model", "resolve_device", "sha256_file"]

logger = logging.getLogger(__name__)

# Input spacing within 5 % of the bundle's spacing is used as is. Beyond that the pair
# is resampled, because the network saw lesions only at its training resolution.
SPACING_TOLERANCE = 0.05

# Pairs per stack when the bundle's inference config has no ``pair_batch_size``. Memory
# grows with the stack. A (96, 192, 192) pair with 7 input channels took about 245 MB
# on the CPU, about 70 bytes per voxel. By that estimate a 512 x 512 x 300 pair needs
# about 5.5 GB and a stack of four about 22 GB.
# NOTE: lower pair_batch_size for large volumes on a CPU host; batching gains nothing there.
DEFAULT_PAIR_BATCH_SIZE = 4


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _device_type(device: str) -> str:
    """Return the device type of a torch device string: ``"cuda:1"`` gives ``"cuda"``."""
    return device.split(":", 1)[0]


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

    @property
    def pair_batch_size(self) -> int:
        """Most pairs of one grid shape per inferer run when ``predict_batch`` gets no size."""
        return int(self._config.get("pair_batch_size", DEFAULT_PAIR_BATCH_SIZE))

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
        return self.predict_batch([(current, prior, spacing)])[0]

    def predict_batch(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
        *,
        batch_size: int | None = None,
    ) -> list[ChangeOutput]:
        """Run sliding-window inference on several registered pairs, batching them.

        Pairs whose inference grid (their shape after the optional resampling to the
        bundle's spacing) is the same are stacked into one ``(B, C, z, y, x)`` tensor
        of up to ``batch_size`` pairs. The sliding-window inferer runs once per stack.
        On an accelerator each forward pass then takes ``B`` times the bundle's
        ``sw_batch_size`` windows. Pairs of other shapes go into stacks of
        their own rather than being padded to a common shape: padding would move the
        windows and change the Gaussian blending at the borders, so a padded pair's
        maps would differ from what it gets alone. The network runs in eval mode,
        where batch normalisation uses its stored statistics, so a pair's result does
        not depend on the others in its stack.

        Parameters
        ----------
        pairs
            ``(current, prior, spacing)`` triples, as :meth:`predict` takes them.
        batch_size
            Most pairs per stack; None takes ``pair_batch_size`` of the bundle's
            inference config, or 4 without one.

        Returns
        -------
        list of ChangeOutput
            One per pair, in input order, each as :meth:`predict` gives it, with
            ``parameters["pair_batch"]`` the number of pairs in its stack.

        Raises
        ------
        ValueError
            When a pair's volumes are not 3-D or differ in shape (checked for every
            pair before any inference), or ``batch_size`` is below 1.
        """
        return [
            self._postprocess(
                probabilities,
                spacing=item.spacing,
                resampled=item.resampled,
                pair_batch=item.pair_batch,
            )
            for item, probabilities in self._infer(pairs, batch_size)
        ]

    def class_probabilities(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
        *,
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """Return each pair's (3, z, y, x) float32 class probabilities on its input grid.

        The classes are no change, new or grown, resolved or shrunk. Pairs are batched
        as in :meth:`predict_batch`; nothing is thresholded, so settings of the
        post-processing can be compared on the same network output.
        """
        return [probabilities for _, probabilities in self._infer(pairs, batch_size)]

    def _infer(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
        batch_size: int | None,
    ) -> list[tuple[_PreparedPair, np.ndarray]]:
        size = self.pair_batch_size if batch_size is None else int(batch_size)
        if size < 1:
            raise ValueError(f"batch_size is {batch_size}, expected at least 1")
        checked = [_checked_pair(index, *pair) for index, pair in enumerate(pairs)]

        results: list[tuple[_PreparedPair, np.ndarray] | None] = [None] * len(checked)
        # Stacks waiting to fill, keyed by inference grid shape.
        waiting: dict[tuple[int, ...], list[_PreparedPair]] = {}
        for index, (current, prior, spacing) in enumerate(checked):
            prepared = self._prepare(index, current, prior, spacing)
            stack = waiting.setdefault(prepared.inputs.shape, [])
            stack.append(prepared)
            if len(stack) == size:
                self._run_stack(waiting.pop(prepared.inputs.shape), results)
        for stack in waiting.values():
            self._run_stack(stack, results)
        return [result for result in results if result is not None]

    def _prepare(
        self, index: int, current: np.ndarray, prior: np.ndarray, spacing: tuple[float, ...]
    ) -> _PreparedPair:
        """Resample a pair to the bundle's spacing when needed and build its input channels."""
        original_shape = current.shape
        target = self.spacing_mm
        zoom = tuple(s / t for s, t in zip(spacing[::-1], target[::-1], strict=True))
        resample = any(abs(f - 1.0) > SPACING_TOLERANCE for f in zoom)
        if resample:
            current = ndimage.zoom(current.astype(np.float32), zoom, order=1)
            prior = ndimage.zoom(prior.astype(np.float32), zoom, order=1)
        inputs = stack_inputs(current, prior, self._config["preprocessing"])
        return _PreparedPair(index, inputs, original_shape, spacing, resample)

    def _run_stack(
        self,
        stack: list[_PreparedPair],
        results: list[tuple[_PreparedPair, np.ndarray] | None],
    ) -> None:
        """Infer one stack of same-shape pairs and put each pair's probabilities in ``results``."""
        import torch

        batch = torch.from_numpy(np.stack([item.inputs for item in stack])).to(self.device)
        with torch.inference_mode():
            logits = self._inferer_for(len(stack))(batch, self._network)
            probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
        del batch, logits

        for item, pair_probabilities in zip(stack, probabilities, strict=True):
            if item.resampled:
                pair_probabilities = np.stack(
                    [_resize(p, item.original_shape) for p in pair_probabilities]
                )
            item.pair_batch = len(stack)
            # The input channels are no longer needed once the stack ran.
            item.inputs = np.empty((0,), dtype=np.float32)
            results[item.index] = (item, pair_probabilities.astype(np.float32, copy=False))

    def _inferer_for(self, pairs: int) -> Any:
        """Return the inferer for a stack of ``pairs`` pairs.

        On an accelerator the stack's forward passes take ``pairs`` times the bundle's
        ``sw_batch_size`` windows, so that batching pairs fills the device. On the CPU
        the bundle's window count is kept, because there 16 windows of 32 x 64 x 64
        voxels per pass were no faster than 4, and in some runs 30 % slower (1 torch
        thread on 2 shared cores).
        """
        # NOTE: the gain on a GPU is not measured. Run benchmarks/change_batch.py with
        # --device cuda to measure it before raising pair_batch_size for a GPU.
        if pairs == 1 or _device_type(self.device) == "cpu":
            return self._inferer
        inferer = copy.copy(self._inferer)
        inferer.sw_batch_size = int(self._config["sw_batch_size"]) * pairs
        return inferer

    def _postprocess(
        self,
        probabilities: np.ndarray,
        *,
        spacing: tuple[float, ...],
        resampled: bool,
        pair_batch: int,
    ) -> ChangeOutput:
        post = self._config["postprocessing"]
        settings = {
            "change_threshold": float(post["change_threshold"]),
            "min_volume_mm3": float(post["min_volume_mm3"]),
            # Bundles from before these rules have neither setting.
            "min_peak": float(post.get("min_peak", 0.0)),
            "border_margin_mm": float(post.get("border_margin_mm", 0.0)),
        }
        labels = label_changes(probabilities, spacing=spacing, **settings)
        parameters = {
            **settings,
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
            "pair_batch": pair_batch,
        }
        change = (1.0 - probabilities[0]).astype(np.float32)
        return ChangeOutput(
            probability=change, labels=labels, method="model", parameters=parameters
        )


@dataclass
class _PreparedPair:
    """A pair's network input on its inference grid, and how to map the result back."""

    index: int
    inputs: np.ndarray  # (C, z, y, x) float32 channels of ``stack_inputs``
    original_shape: tuple[int, ...]
    spacing: tuple[float, ...]
    resampled: bool
    pair_batch: int = 0


def _checked_pair(
    index: int, current: np.ndarray, prior: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Return the pair as arrays and a float spacing, or raise naming the pair's position."""
    current = np.asarray(current)
    prior = np.asarray(prior)
    if current.ndim != 3 or current.shape != prior.shape:
        raise ValueError(
            f"pair {index}: current shape {current.shape} and prior shape {prior.shape}: "
            "expected two 3-D (z, y, x) volumes of the same shape"
        )
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3:
        raise ValueError(f"pair {index}: spacing {spacing} has {len(spacing)} values, expected 3")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"pair {index}: spacing {spacing} must be three positive finite mm")
    for name, volume in (("current", current), ("prior", prior)):
        if not np.isfinite(volume).all():
            bad = int(volume.size - np.count_nonzero(np.isfinite(volume)))
            raise ValueError(
                f"pair {index}: the {name} volume has {bad} NaN or infinite voxels; "
                "the network's windows would spread them over the map"
            )
    return current, prior, spacing


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
    config["pair_batch_size"] = parser.get_parsed_content(
        "pair_batch_size", default=DEFAULT_PAIR_BATCH_SIZE
    )

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
