"""Places that hold DICOM instances: folders, ZIP archives and DICOMDIR media."""

from __future__ import annotations

import os
from pathlib import Path

from priors.dicom.dicomdir import find_dicomdir
from priors.sources.archive import looks_like_zip
from priors.sources.base import (
    AbsentReference,
    Source,
    SourceFile,
    SourceIssue,
    patient_issuer,
)
from priors.sources.folder import FolderSource, ZipSource
from priors.sources.media import MediaSource

__all__ = [
    "AbsentReference",
    "FolderSource",
    "MediaSource",
    "Source",
    "SourceFile",
    "SourceIssue",
    "ZipSource",
    "open_source",
    "patient_issuer",
]


def open_source(
    path: str | os.PathLike[str],
    *,
    issuer: str = "",
    source_id: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> FolderSource | ZipSource:
    """Open a folder or a ZIP archive as a source.

    A folder with a DICOMDIR at its root is media (``MediaSource``), any other
    folder a ``FolderSource``. A file with the ``.zip`` suffix or a ZIP signature
    is a ``ZipSource``, read like a folder that contains its members. A damaged
    archive still opens, and ingest reports it rejected with the reason.

    Parameters
    ----------
    path
        The folder or ZIP file.
    issuer
        Issuer of Patient ID to assume for instances that carry none.
    source_id
        Stable identifier of the source; derived from the kind and path when ``None``.
    cache_dir
        Folder for extracted ZIP members; under the priors home folder by default.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    NotADirectoryError
        When ``path`` is a file but not a ZIP archive.
    """
    root = Path(path)
    if root.is_dir():
        dicomdir = find_dicomdir(root)
        if dicomdir is not None:
            return MediaSource(root, dicomdir=dicomdir, issuer=issuer, source_id=source_id,
                               cache_dir=cache_dir)
        return FolderSource(root, issuer=issuer, source_id=source_id, cache_dir=cache_dir)
    if not root.exists():
        raise FileNotFoundError(
            f"{root}: no such file or folder; a source is a folder, a DICOMDIR media "
            "folder or a ZIP archive"
        )
    if looks_like_zip(root):
        return ZipSource(root, issuer=issuer, source_id=source_id, cache_dir=cache_dir)
    raise NotADirectoryError(
        f"{root}: not a folder and not a ZIP archive (no .zip suffix, no ZIP signature "
        "in its first bytes); give the folder that contains it"
    )
