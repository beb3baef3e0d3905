"""ZIP archives, as a source of their own or found in a folder, extracted into a cache.

Members are copied once to ``<cache>/<SHA-256 of the archive>/<member index>``, so
the same archive is never extracted twice and a changed archive gets a new folder.
Members are stored under their index, not their name, so no member name (absolute,
with ``..``, or clashing in case) can write outside the cache folder. The member's
name stays in the ``location`` of its ``SourceFile``: ``<archive>!<member name>``.

Nothing in an archive is passed over in silence. An archive that cannot be opened
(truncated, corrupt, not a ZIP file at all) is listed with an ``error`` that ingest
reports as the reason it was rejected. A member that cannot be extracted (bad CRC,
damaged compressed data, encrypted, unknown compression method) is listed the same
way, and the other members of its archive are still read.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from priors.dicom.hashing import file_sha256
from priors.sources.base import (
    ROLE_ARCHIVE,
    ROLE_INSTANCE,
    SourceFile,
)

__all__ = [
    "ARCHIVE_SUFFIX",
    "default_cache_dir",
    "is_zip_archive",
    "iter_archive_files",
    "iter_archive_members",
    "looks_like_zip",
]

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".zip"
COMPLETE_MARKER = ".complete"
# Suffix of the file that contains the reason a member could not be extracted.
ERROR_SUFFIX = ".error"
# Bytes copied per read while extracting a member.
COPY_BLOCK_BYTES = 1 << 20
# A ZIP file starts with a local file header, or with the end of central directory
# record when it is empty: zipfile's stringFileHeader and stringEndArchive.
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
# Exceptions that zipfile and its decompressors raise for a damaged member: zlib.error
# and EOFError for damaged or cut deflate data, NotImplementedError for an unknown
# compression method, RuntimeError for an encrypted member.
MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)
# Exceptions raised on opening an archive that cannot be read or whose central
# directory is missing or damaged.
ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError)


def default_cache_dir() -> Path:
    """Return the archive cache folder under the priors home folder."""
    from priors.config import load_settings

    return load_settings().home / "cache" / "zip"


def is_zip_archive(path: Path) -> bool:
    """Tell whether a file in a folder is read as a ZIP archive: by its ``.zip`` suffix.

    The suffix alone decides, so that a truncated or corrupt ``.zip`` file is
    reported as a damaged archive, not as a file that is not DICOM. Office documents
    and other ZIP-based formats under their own suffixes stay plain files.
    """
    return path.suffix.lower() == ARCHIVE_SUFFIX


def looks_like_zip(path: Path) -> bool:
    """Tell whether a file is a ZIP archive by its ``.zip`` suffix or its first bytes."""
    if is_zip_archive(path):
        return True
    try:
        with open(path, "rb") as stream:
            return stream.read(4) in ZIP_SIGNATURES
    except OSError:
        return False


def iter_archive_files(
    archive: Path, *, source_id: str, cache_dir: Path, issues: list[str] | None = None
) -> Iterator[SourceFile]:
    """Yield the archive as a ``ROLE_ARCHIVE`` file, then one ``SourceFile`` per member.

    An archive that cannot be opened or extracted is yielded alone, with an
    ``error`` naming the reason; each failure is also appended to ``issues``.
    """
    try:
        members = list(iter_archive_members(archive, source_id=source_id, cache_dir=cache_dir))
    except ARCHIVE_ERRORS as err:
        message = _archive_error(archive, err)
        logger.error(message)
        if issues is not None:
            issues.append(message)
        yield SourceFile(source_id, archive, ROLE_ARCHIVE, error=message)
        return

    yield SourceFile(source_id, archive, ROLE_ARCHIVE)
    for member in members:
        if member.error and issues is not None:
            issues.append(f"{member.location}: {member.error}")
        yield member


def iter_archive_members(
    archive: Path, *, source_id: str, cache_dir: Path
) -> Iterator[SourceFile]:
    """Extract an archive once into the cache and yield one ``SourceFile`` per member.

    A member that cannot be extracted is yielded with its ``error`` set and the
    file holding that message as its ``path``. A member name that repeats an earlier
    one gets ``#<member index>`` appended to its location, so both are accounted for.

    Raises
    ------
    OSError
        When the archive or the cache folder cannot be read or written.
    zipfile.BadZipFile
        When the archive's central directory is missing or corrupt.
    """
    target = cache_dir / file_sha256(archive)
    with zipfile.ZipFile(archive) as bundle:
        members = [info for info in bundle.infolist() if not info.is_dir()]
        if not (target / COMPLETE_MARKER).is_file():
            _extract(bundle, members, target)
            logger.info("extracted %d members of %s into %s", len(members), archive, target)

    seen: set[str] = set()
    for index, info in enumerate(members):
        location = f"{archive}!{info.filename}"
        if location in seen:
            location = f"{location}#{index}"
        seen.add(location)
        stored = target / f"{index:06d}"
        error_file = stored.with_name(stored.name + ERROR_SUFFIX)
        if error_file.is_file():
            yield SourceFile(source_id, error_file, ROLE_INSTANCE, location=location,
                             error=error_file.read_text(encoding="utf-8"))
        else:
            yield SourceFile(source_id, stored, ROLE_INSTANCE, location=location)


def _archive_error(archive: Path, err: BaseException) -> str:
    if isinstance(err, zipfile.BadZipFile) and str(err) == "File is not a zip file":
        # zipfile's wording when the end of central directory record is not found.
        return (f"invalid ZIP archive: no end of central directory record in {archive} "
                "(truncated, or not a ZIP file)")
    if isinstance(err, OSError) and not isinstance(err, zipfile.BadZipFile):
        return f"unreadable ZIP archive {archive}: {err.strerror or err}"
    return f"invalid ZIP archive {archive}: {type(err).__name__}: {err}"


def _extract(bundle: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path) -> None:
    # Extract into a temporary sibling and rename, so a crash leaves no half folder.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        for index, info in enumerate(members):
            _extract_member(bundle, info, staging / f"{index:06d}")
        (staging / COMPLETE_MARKER).touch()
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _extract_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, stored: Path) -> None:
    try:
        with bundle.open(info) as source, open(stored, "wb") as sink:
            shutil.copyfileobj(source, sink, COPY_BLOCK_BYTES)
    except MEMBER_ERRORS as err:
        stored.unlink(missing_ok=True)
        message = f"invalid ZIP member: {type(err).__name__}: {err}"
        logger.warning("%s!%s: %s", bundle.filename, info.filename, message)
        stored.with_name(stored.name + ERROR_SUFFIX).write_text(message, encoding="utf-8")
