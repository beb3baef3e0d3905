"""Removable media (CD, DVD, USB) indexed by a DICOMDIR.

The DICOMDIR says which files hold which instances, but real media are often
incomplete or inconsistent: records reference files that were never written,
records are malformed, names differ in case. ``MediaSource`` reports each of these
and also scans the folder, so every readable file is listed whatever the DICOMDIR
says.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from priors.dicom.dicomdir import Dicomdir, find_dicomdir, read_dicomdir
from priors.sources.base import (
    ROLE_DICOMDIR,
    ROLE_INSTANCE,
    AbsentReference,
    SourceFile,
    SourceIssue,
)
from priors.sources.folder import FolderSource

__all__ = ["MediaSource"]

logger = logging.getLogger(__name__)


class MediaSource(FolderSource):
    """A file set with a DICOMDIR at its root.

    Parameters
    ----------
    root
        Root folder of the file set.
    dicomdir
        The DICOMDIR file; found at the root in any case when ``None``.
    issuer
        Issuer of Patient ID to assume for instances that carry none.
    source_id
        Stable identifier; ``"media:<File-set ID>@<absolute root>"`` by default.
    cache_dir
        Folder for extracted archive members found while scanning.

    Raises
    ------
    FileNotFoundError
        When ``dicomdir`` is ``None`` and the root has no DICOMDIR.
    """

    kind = "media"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        dicomdir: str | os.PathLike[str] | None = None,
        issuer: str = "",
        source_id: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        root_path = Path(root).absolute()
        found = Path(dicomdir) if dicomdir is not None else find_dicomdir(root_path)
        if found is None:
            raise FileNotFoundError(f"{root_path}: no DICOMDIR at the root of the folder")
        self.dicomdir_path = found.absolute()
        self.index: Dicomdir | None = None
        self.index_error = ""
        try:
            self.index = read_dicomdir(self.dicomdir_path)
        except (OSError, ValueError) as err:
            # pydicom raises ValueError subclasses (InvalidDicomError) for bad files.
            self.index_error = f"{self.dicomdir_path}: cannot read DICOMDIR: {err}"
            logger.error("%s; the folder is scanned instead", self.index_error)
        file_set_id = self.index.file_set_id if self.index else ""
        super().__init__(
            root_path,
            issuer=issuer,
            source_id=source_id or f"{self.kind}:{file_set_id}@{root_path}",
            cache_dir=cache_dir,
        )

    def describe(self) -> dict[str, Any]:
        """Return the kind, id, root, DICOMDIR and file-set identity, for provenance."""
        description = super().describe()
        description["dicomdir"] = str(self.dicomdir_path)
        if self.index is not None:
            description["file_set_id"] = self.index.file_set_id
            description["media_storage_sop_instance_uid"] = (
                self.index.media_storage_sop_instance_uid
            )
        return description

    def iter_files(self) -> Iterator[SourceFile]:
        """Yield the DICOMDIR, the files it references, then every other file found.

        The scan of the folder is what keeps unreferenced instances: media writers
        leave files out of the DICOMDIR, and a damaged DICOMDIR may list none.
        """
        # A DICOMDIR that cannot be read is rejected with the reason; its folder is
        # still scanned below.
        yield SourceFile(self.source_id, self.dicomdir_path, ROLE_DICOMDIR,
                         error=self.index_error)
        listed = {_identity(self.dicomdir_path)}
        referenced = 0
        for source_file in self._referenced_files():
            identity = _identity(source_file.path)
            if identity in listed:
                continue
            listed.add(identity)
            referenced += 1
            yield source_file

        unreferenced = 0
        for source_file in super().iter_files():
            identity = _identity(source_file.path)
            if identity in listed:
                continue
            listed.add(identity)
            unreferenced += 1
            yield source_file
        self._add_index_issues()
        logger.info(
            "media %s: %d files referenced by the DICOMDIR, %d more found by scanning, "
            "%d absent references",
            self.source_id, referenced, unreferenced, len(self.absent_references()),
        )

    def absent_references(self) -> list[AbsentReference]:
        """Return the DICOMDIR records whose referenced file is not on the media."""
        if self.index is None:
            return []
        return [
            AbsentReference(
                source_id=self.source_id,
                referenced_file_id=record.file_id_text,
                record_type=record.record_type,
                sop_instance_uid=record.sop_instance_uid,
                sop_class_uid=record.sop_class_uid,
                patient_id=record.patient_id,
                study_instance_uid=record.study_instance_uid,
                series_instance_uid=record.series_instance_uid,
            )
            for record in self.index.absent_records
        ]

    def _referenced_files(self) -> Iterator[SourceFile]:
        if self.index is None:
            return
        for record in self.index.file_records:
            if record.path is not None:
                yield SourceFile(self.source_id, record.path, _role_of(record.path))

    def _add_index_issues(self) -> None:
        if self.index_error:
            self._issues.append(SourceIssue(self.source_id, "dicomdir", self.index_error))
        if self.index is None:
            return
        for issue in self.index.issues:
            self._issues.append(SourceIssue(self.source_id, issue.kind, issue.message))
        absent = len(self.index.absent_records)
        if absent:
            self._issues.append(SourceIssue(
                self.source_id, "absent",
                f"{self.dicomdir_path}: {absent} directory records reference absent files",
            ))


def _role_of(path: Path) -> str:
    return ROLE_DICOMDIR if path.name.upper().startswith("DICOMDIR") else ROLE_INSTANCE


def _identity(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))
