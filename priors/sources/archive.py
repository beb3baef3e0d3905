"""ZIP archives under a folder source, extracted into a content-addressed cache.

Members are copied once to ``<cache>/<SHA-256 of the archive>/<member index>``, so
the same archive is never extracted twice and a changed archive gets a new folder.
Members are stored under their index, not their name, so no member name (absolute,
with ``..``, or clashing in case) can write outside the cache folder. The member's
name stays in the ``location`` of its ``SourceFile``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from priors.dicom.hashing import file_sha256
from priors.sources.base import ROLE_INSTANCE, SourceFile

__all__ = ["ARCHIVE_SUFFIX", "default_cache_dir", "is_zip_archive", "iter_archive_members"]

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".zip"
COMPLETE_MARKER = ".complete"
# Bytes copied per read while extracting a member.
COPY_BLOCK_BYTES = 1 << 20


def default_cache_dir() -> Path:
    """Return the archive cache folder under the priors home folder."""
    from priors.config import load_settings

    return load_settings().home / "cache" / "zip"


def is_zip_archive(path: Path) -> bool:
    """Tell whether a file is a ZIP archive by its suffix and its signature."""
    if path.suffix.lower() != ARCHIVE_SUFFIX:
        return False
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def iter_archive_members(
    archive: Path, *, source_id: str, cache_dir: Path
) -> Iterator[SourceFile]:
    """Extract an archive once into the cache and yield one ``SourceFile`` per member.

    Raises
    ------
    OSError
        When the archive or the cache folder cannot be read or written.
    zipfile.BadZipFile
        When the archive is corrupt.
    """
    target = cache_dir / file_sha256(archive)
    with zipfile.ZipFile(archive) as bundle:
        members = [info for info in bundle.infolist() if not info.is_dir()]
        if not (target / COMPLETE_MARKER).is_file():
            _extract(bundle, members, target)
            logger.info("extracted %d members of %s into %s", len(members), archive, target)
    for index, info in enumerate(members):
        yield SourceFile(
            source_id=source_id,
            path=target / f"{index:06d}",
            role=ROLE_INSTANCE,
            location=f"{archive}!{info.filename}",
        )


def _extract(bundle: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path) -> None:
    # Extract into a temporary sibling and rename, so a crash leaves no half folder.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        for index, info in enumerate(members):
            with bundle.open(info) as source, open(staging / f"{index:06d}", "wb") as sink:
                shutil.copyfileobj(source, sink, COPY_BLOCK_BYTES)
        (staging / COMPLETE_MARKER).touch()
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
