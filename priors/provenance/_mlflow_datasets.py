"""MLflow dataset classes for DICOM series, imported only when a run logs inputs.

MLflow derives a dataset's digest itself unless one is given, and caps it at 36
characters. ``DicomSeriesDataset`` always takes the digest from the caller: the
first 32 hexadecimal characters of the series digest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.meta_dataset import MetaDataset

__all__ = ["DicomSeriesDataset", "DicomSeriesSource"]

SOURCE_TYPE = "priors_dicom_series"


class DicomSeriesSource(DatasetSource):
    """A DICOM series at a source, named without patient identifiers.

    Parameters
    ----------
    uri
        For example ``"media:PSP@/mnt/cd#series=1.2.3"``: source kind and id, its
        root, and the Series Instance UID.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return SOURCE_TYPE

    def load(self) -> str:
        """Return the URI; the instances themselves are read through priors' sources."""
        return self.uri

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DicomSeriesSource:
        raise NotImplementedError("a DICOM series source is built by priors, never resolved")

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DicomSeriesSource:
        return cls(source_dict["uri"])


class DicomSeriesDataset(MetaDataset):
    """Metadata of one model input series: source, digest and a profile."""

    def __init__(
        self, source: DicomSeriesSource, *, name: str, digest: str, profile: Mapping[str, Any]
    ) -> None:
        self._profile = dict(profile)
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        """Summary of the series: instance count, modality, size and spacing."""
        return self._profile

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        config["profile"] = json.dumps(self._profile, sort_keys=True)
        return config


# MLflow's registry stores source classes, although its signature names an instance.
register_dataset_source(DicomSeriesSource)  # type: ignore[arg-type]
