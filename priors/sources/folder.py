"""A folder of DICOM files, walked recursively, with ZIP archives opened in place."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from priors.sources.archive import default_cache_dir, is_zip_archive, iter_archive_files
from priors.sources.base import (
    ROLE_INSTANCE,
    AbsentReference,
    SourceFile,
    SourceIssue,
)

__all__ = ["FolderSource", "ZipSource", "walk_files"]

logger = logging.getLogger(__name__)


class FolderSource:
    """Every file under a folder, including the members of ``.zip`` archives.

    Parameters
    ----------
    root
        The folder to walk.
    issuer
        Issuer of Patient ID to assume for instances that carry none.
    source_id
        Stable identifier; ``"folder:<absolute root>"`` by default.
    cache_dir
        Folder for extracted archive members; ``<priors home>/cache/zip`` by default.
    """

    kind = "folder"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        issuer: str = "",
        source_id: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.issuer = issuer
        self.source_id = source_id or f"{self.kind}:{self.root}"
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._issues: list[SourceIssue] = []

    def describe(self) -> dict[str, Any]:
        """Return the kind, id, root and issuer of the source, for provenance."""
        return {"kind": self.kind, "source_id": self.source_id, "root": str(self.root),
                "issuer": self.issuer, "file_set_id": ""}

    def iter_files(self) -> Iterator[SourceFile]:
        """Yield every file under the root; archive members follow their archive."""
        self._issues = []
        messages: list[str] = []
        archive_messages: list[str] = []
        for path in walk_files(self.root, issues=messages):
            if is_zip_archive(path):
                yield from self._iter_archive(path, archive_messages)
            else:
                yield SourceFile(self.source_id, path, ROLE_INSTANCE)
        self._issues.extend(SourceIssue(self.source_id, "folder", text) for text in messages)
        self._issues.extend(
            SourceIssue(self.source_id, "archive", text) for text in archive_messages
        )

    def absent_references(self) -> list[AbsentReference]:
        """Return no records: a plain folder has no DICOMDIR."""
        return []

    def issues(self) -> list[SourceIssue]:
        """Return the problems met by the last complete ``iter_files``."""
        return list(self._issues)

    def _iter_archive(self, path: Path, messages: list[str]) -> Iterator[SourceFile]:
        yield from iter_archive_files(path, source_id=self.source_id,
                                      cache_dir=self._cache_dir or default_cache_dir(),
                                      issues=messages)


class ZipSource(FolderSource):
    """A ZIP archive given as a source: read like a folder holding its members.

    Parameters
    ----------
    archive
        The ZIP file.
    issuer
        Issuer of Patient ID to assume for instances that carry none.
    source_id
        Stable identifier; ``"zip:<absolute path>"`` by default.
    cache_dir
        Folder for extracted members; ``<priors home>/cache/zip`` by default.
    """

    kind = "zip"

    def iter_files(self) -> Iterator[SourceFile]:
        """Yield the archive itself, then every member; see ``iter_archive_files``."""
        messages: list[str] = []
        yield from iter_archive_files(self.root, source_id=self.source_id,
                                      cache_dir=self._cache_dir or default_cache_dir(),
                                      issues=messages)
        self._issues = [SourceIssue(self.source_id, "archive", text) for text in messages]

    def absent_references(self) -> list[AbsentReference]:
        """Return no records: an archive is read without its DICOMDIR, if it has one."""
        return []


def walk_files(root: Path, *, issues: list[str] | None = None) -> Iterator[Path]:
    """Yield every file under a folder in sorted order, following directory links once.

    A directory reached a second time (through a symbolic link loop or a second link
    to it) is not walked again; each such case is appended to ``issues``. A file
    link that cannot be resolved (broken or looping) is still yielded, so that its
    reader reports it.
    """
    visited: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            status = folder.stat()
        except OSError as err:
            _note(issues, f"{folder}: cannot open folder: {err}")
            continue
        key = (status.st_dev, status.st_ino)
        if key in visited:
            _note(issues, f"{folder}: folder already walked (symbolic link loop or "
                          "second link); not walked again")
            continue
        visited.add(key)

        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as err:
            _note(issues, f"{folder}: cannot list folder: {err}")
            continue
        subfolders = []
        for entry in entries:
            if _is_folder(entry):
                subfolders.append(Path(entry.path))
            else:
                yield Path(entry.path)
        # Reversed, so that the stack pops sub-folders in sorted order.
        pending.extend(reversed(subfolders))


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _note(issues: list[str] | None, message: str) -> None:
    logger.warning(message)
    if issues is not None:
        issues.append(message)
