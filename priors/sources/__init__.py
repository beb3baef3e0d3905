"""Places that hold DICOM instances: folders, ZIP archives and DICOMDIR media."""

from __future__ import annotations

import os
from pathlib import Path

from priors.dicom.dicomdir import find_dicomdir
from priors.sources.base import (
    AbsentReference,
    Source,
    SourceFile,
    SourceIssue,
    patient_issuer,
)
from priors.sources.folder import FolderSource
from priors.sources.media import MediaSource

__all__ = [
    "AbsentReference",
    "FolderSource",
    "MediaSource",
    "Source",
    "SourceFile",
    "SourceIssue",
    "open_source",
    "patient_issuer",
]


def open_source(
    path: str | os.PathLike[str],
    *,
    issuer: str = "",
    source_id: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> FolderSource:
    """Open a folder as a source: media when a DICOMDIR is at its root, else a folder.

    Parameters
    ----------
    path
        The folder.
    issuer
        Issuer of Patient ID to assume for instances that carry none.
    source_id
        Stable identifier of the source; derived from the kind and path when ``None``.
    cache_dir
        Folder for extracted ZIP members; under the priors home folder by default.

    Raises
    ------
    NotADirectoryError
        When ``path`` is not a folder.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder; a source must be a folder")
    dicomdir = find_dicomdir(root)
    if dicomdir is not None:
        return MediaSource(root, dicomdir=dicomdir, issuer=issuer, source_id=source_id,
                           cache_dir=cache_dir)
    return FolderSource(root, issuer=issuer, source_id=source_id, cache_dir=cache_dir)
