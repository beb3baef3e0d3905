"""Read a DICOMDIR (PS3.10 section 8, PS3.3 Annex F) into flat directory records.

The directory records are linked by byte offsets: each record names its next sibling
and its first child. This module walks those links from the root, carries the
patient, study and series of the enclosing records down to each record that
references a file, and resolves the Referenced File ID (0004,1500) to a path.

Media are read tolerantly. CD file systems (ISO 9660) may store names in another case
or with a ``;1`` version suffix, so names are matched case-insensitively. A record
whose file is absent, a record that is malformed, and a record that references a
further DICOMDIR are each reported, and the rest of the directory is still read.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import MediaStorageDirectoryStorage

__all__ = [
    "DIRECTORY_ISSUE_KINDS",
    "Dicomdir",
    "DirectoryIssue",
    "DirectoryRecord",
    "find_dicomdir",
    "read_dicomdir",
]

logger = logging.getLogger(__name__)

DICOMDIR_NAME = "DICOMDIR"
# ISO 9660 level 1 names may carry a file version suffix.
ISO9660_VERSION_SUFFIX = ";1"

DIRECTORY_ISSUE_KINDS = ("malformed", "nested-dicomdir", "unreachable", "outside-root",
                         "truncated")

# Records of these types carry the identity that their lower-level records inherit.
_CONTEXT_TYPES = {"PATIENT": "patient_id", "STUDY": "study_instance_uid",
                  "SERIES": "series_instance_uid"}
_CONTEXT_KEYWORDS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
                     "SERIES": "SeriesInstanceUID"}

# Record In-use Flag (0004,1410) value of an inactive record (retired in PS3.3, but
# still written by older media).
INACTIVE_RECORD = 0x0000


@dataclass(frozen=True)
class DirectoryRecord:
    """One directory record with the identity of its enclosing records.

    ``path`` is the referenced file resolved on disk, ``None`` when the record
    references no file or when that file is absent (``absent`` is true for the latter).
    """

    record_type: str
    offset: int
    referenced_file_id: tuple[str, ...]
    path: Path | None
    absent: bool
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str

    @property
    def file_id_text(self) -> str:
        """The Referenced File ID as a relative path with ``/`` separators."""
        return "/".join(self.referenced_file_id)


@dataclass(frozen=True)
class DirectoryIssue:
    """A problem found in a DICOMDIR: its kind, the record's offset and a message."""

    kind: str
    offset: int | None
    message: str


@dataclass(frozen=True)
class Dicomdir:
    """The records of a DICOMDIR with its file-set identity and the issues found."""

    path: Path
    root: Path
    file_set_id: str
    media_storage_sop_instance_uid: str
    records: tuple[DirectoryRecord, ...]
    issues: tuple[DirectoryIssue, ...] = field(default=())

    @property
    def file_records(self) -> tuple[DirectoryRecord, ...]:
        """Records that reference a file."""
        return tuple(record for record in self.records if record.referenced_file_id)

    @property
    def absent_records(self) -> tuple[DirectoryRecord, ...]:
        """Records whose referenced file is not on disk."""
        return tuple(record for record in self.records if record.absent)


def find_dicomdir(folder: str | os.PathLike[str]) -> Path | None:
    """Return the DICOMDIR file at the root of a folder, matching its name in any case."""
    root = Path(folder)
    exact = root / DICOMDIR_NAME
    if exact.is_file():
        return exact
    try:
        names = os.listdir(root)
    except OSError:
        return None
    for name in sorted(names):
        if _normalise_name(name) == DICOMDIR_NAME and (root / name).is_file():
            return root / name
    return None


def read_dicomdir(path: str | os.PathLike[str]) -> Dicomdir:
    """Read a DICOMDIR file and resolve its records against the folder it sits in.

    Parameters
    ----------
    path
        The DICOMDIR file. Referenced File IDs are relative to its folder.

    Returns
    -------
    Dicomdir
        Every active record reachable from the root directory entity, followed by
        any record that is not reachable (reported as ``unreachable``).

    Raises
    ------
    OSError
        When the file cannot be read.
    ValueError
        When the file has no (0004,1220) Directory Record Sequence.
    """
    dicomdir_path = Path(path)
    with warnings.catch_warnings():
        # An invalid Media Storage SOP Instance UID must not stop the reading.
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(os.fspath(dicomdir_path), force=True)
    if "DirectoryRecordSequence" not in ds:
        raise ValueError(
            f"{dicomdir_path}: (0004,1220) Directory Record Sequence is missing, "
            "expected a DICOMDIR"
        )

    walker = _RecordWalker(ds, root=dicomdir_path.parent)
    records, issues = walker.walk()
    truncation = _truncation(dicomdir_path, ds)
    if truncation:
        issues.append(DirectoryIssue("truncated", None, truncation))
    file_meta = getattr(ds, "file_meta", Dataset())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        media_uid = str(file_meta.get("MediaStorageSOPInstanceUID", ""))
    result = Dicomdir(
        path=dicomdir_path,
        root=dicomdir_path.parent,
        file_set_id=str(ds.get("FileSetID", "") or "").strip(),
        media_storage_sop_instance_uid=media_uid,
        records=tuple(records),
        issues=tuple(issues),
    )
    logger.info(
        "read DICOMDIR %s: %d records, %d referencing files, %d absent, %d issues",
        dicomdir_path, len(result.records), len(result.file_records),
        len(result.absent_records), len(result.issues),
    )
    return result


class _RecordWalker:
    """Follow the sibling and child offsets of a directory record sequence."""

    def __init__(self, ds: Dataset, *, root: Path) -> None:
        self.root = root
        self.items: list[Dataset] = list(ds.DirectoryRecordSequence)
        self.by_offset = {
            item.seq_item_tell: item for item in self.items
            if getattr(item, "seq_item_tell", None) is not None
        }
        first = ds.get("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity", 0)
        self.first_offset = int(first or 0)
        self.visited: set[int] = set()
        self.records: list[DirectoryRecord] = []
        self.issues: list[DirectoryIssue] = []
        self.listings: dict[Path, dict[str, str]] = {}

    def walk(self) -> tuple[list[DirectoryRecord], list[DirectoryIssue]]:
        if self.first_offset in self.by_offset:
            self._walk_entity(self.first_offset, context={})
        else:
            self.issues.append(DirectoryIssue(
                "malformed", None,
                f"root record offset {self.first_offset} matches no directory record; "
                "records are read in sequence order",
            ))

        # Records not reached through the offsets are still read, without context.
        for item in self.items:
            offset = getattr(item, "seq_item_tell", None)
            if offset in self.visited:
                continue
            if offset is not None:
                self.visited.add(offset)
            if self.first_offset in self.by_offset:
                self.issues.append(DirectoryIssue(
                    "unreachable", offset,
                    f"directory record at offset {offset} is not linked from the root",
                ))
            self._add_record(item, offset or 0, context={})
        return self.records, self.issues

    def _walk_entity(self, offset: int, *, context: dict[str, str]) -> None:
        # An explicit stack keeps deep or cyclic links from exhausting recursion.
        stack: list[tuple[int, dict[str, str]]] = [(offset, context)]
        while stack:
            current, current_context = stack.pop()
            while current:
                if current in self.visited:
                    self.issues.append(DirectoryIssue(
                        "malformed", current,
                        f"directory record at offset {current} is linked twice; the loop "
                        "was cut",
                    ))
                    break
                item = self.by_offset.get(current)
                if item is None:
                    self.issues.append(DirectoryIssue(
                        "malformed", current,
                        f"offset {current} matches no directory record",
                    ))
                    break
                self.visited.add(current)
                child_context = self._add_record(item, current, context=current_context)
                child = int(item.get("OffsetOfReferencedLowerLevelDirectoryEntity", 0) or 0)
                if child:
                    stack.append((child, child_context))
                current = int(item.get("OffsetOfTheNextDirectoryRecord", 0) or 0)

    def _add_record(self, item: Dataset, offset: int, *, context: dict[str, str]) -> dict[str, str]:
        record_type = str(item.get("DirectoryRecordType", "") or "").strip().upper()
        if not record_type:
            self.issues.append(DirectoryIssue(
                "malformed", offset,
                f"directory record at offset {offset} has no (0004,1430) Directory Record Type",
            ))
        if item.get("RecordInUseFlag") == INACTIVE_RECORD:
            logger.debug("directory record at offset %d is inactive; ignored", offset)
            return context

        child_context = dict(context)
        if record_type in _CONTEXT_TYPES:
            child_context[_CONTEXT_TYPES[record_type]] = _text(item, _CONTEXT_KEYWORDS[record_type])

        file_id = _file_id(item.get("ReferencedFileID"))
        path: Path | None = None
        absent = False
        if file_id:
            path, absent = self._resolve_checked(file_id, offset)
            self._check_file_record(item, file_id, offset)

        self.records.append(DirectoryRecord(
            record_type=record_type,
            offset=offset,
            referenced_file_id=file_id,
            path=path,
            absent=absent,
            sop_instance_uid=_text(item, "ReferencedSOPInstanceUIDInFile"),
            sop_class_uid=_text(item, "ReferencedSOPClassUIDInFile"),
            transfer_syntax_uid=_text(item, "ReferencedTransferSyntaxUIDInFile"),
            patient_id=child_context.get("patient_id", ""),
            study_instance_uid=child_context.get("study_instance_uid", ""),
            series_instance_uid=child_context.get("series_instance_uid", ""),
        ))
        return child_context

    def _resolve_checked(self, file_id: tuple[str, ...], offset: int) -> tuple[Path | None, bool]:
        if any(part in ("", ".", "..") or "/" in part or "\\" in part for part in file_id):
            self.issues.append(DirectoryIssue(
                "outside-root", offset,
                f"directory record at offset {offset}: (0004,1500) Referenced File ID "
                f"{'/'.join(file_id)!r} is not a relative path inside the file set",
            ))
            return None, False
        path = self._resolve(file_id)
        return path, path is None

    def _check_file_record(self, item: Dataset, file_id: tuple[str, ...], offset: int) -> None:
        sop_class = _text(item, "ReferencedSOPClassUIDInFile")
        nested = _normalise_name(file_id[-1]) == DICOMDIR_NAME
        if sop_class == MediaStorageDirectoryStorage or nested:
            self.issues.append(DirectoryIssue(
                "nested-dicomdir", offset,
                f"directory record at offset {offset} references a further DICOMDIR "
                f"{'/'.join(file_id)!r}",
            ))
        elif not _text(item, "ReferencedSOPInstanceUIDInFile"):
            self.issues.append(DirectoryIssue(
                "malformed", offset,
                f"directory record at offset {offset} references {'/'.join(file_id)!r} but "
                "has no (0004,1511) Referenced SOP Instance UID in File",
            ))

    def _resolve(self, file_id: tuple[str, ...]) -> Path | None:
        current = self.root
        for part in file_id:
            listing = self._listing(current)
            name = listing.get(_normalise_name(part))
            if name is None:
                return None
            current = current / name
        return current if current.is_file() else None

    def _listing(self, folder: Path) -> dict[str, str]:
        if folder not in self.listings:
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            listing: dict[str, str] = {}
            for name in names:
                # An exact-case name wins over another spelling of it.
                listing.setdefault(_normalise_name(name), name)
            self.listings[folder] = listing
        return self.listings[folder]


def _normalise_name(name: str) -> str:
    if name.endswith(ISO9660_VERSION_SUFFIX):
        name = name[: -len(ISO9660_VERSION_SUFFIX)]
    return name.rstrip(".").upper()


def _truncation(path: Path, ds: Dataset) -> str:
    """Return why the record sequence ends before its declared end, or "" if it does not.

    pydicom reads a file cut inside a defined-length sequence without complaint,
    keeping the bytes that are there, so the declared length of (0004,1220) is checked
    here. A cut undefined-length sequence makes pydicom raise instead.
    """
    element = ds["DirectoryRecordSequence"]
    # pydicom records where the element's value starts; its 4-byte length precedes it
    # in both implicit and explicit VR.
    start = getattr(element, "file_tell", None)
    if start is None or start < 4 or element.is_undefined_length:
        return ""
    with open(path, "rb") as stream:
        stream.seek(start - 4)
        length = int.from_bytes(stream.read(4), "little")
    size = path.stat().st_size
    if start + length > size:
        return (f"{path}: (0004,1220) Directory Record Sequence declares {length} bytes "
                f"but the file ends {start + length - size} bytes short; the DICOMDIR is "
                "truncated")
    return ""


def _file_id(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        parts = [value]
    else:
        parts = [str(part) for part in value]  # type: ignore[attr-defined]
    return tuple(part.strip() for part in parts)


def _text(item: Dataset, keyword: str) -> str:
    try:
        value = item.get(keyword)
    except Exception:  # a malformed value must not stop the reading
        return ""
    return "" if value is None else str(value).strip(" \x00")
