"""Audit checks: does a provenance record still match the files it names?"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from priors.provenance.digests import file_sha256, series_digest

__all__ = [
    "CHANGED",
    "MISSING",
    "UNCHANGED",
    "AuditReport",
    "InstanceCheck",
    "PixelFetcher",
    "location_sha256",
    "verify_instances",
    "verify_record",
    "volume_digest_problems",
]

logger = logging.getLogger(__name__)


@dataclass
class AuditReport:
    """Outcome of ``verify_record``: counts, and one message per problem found."""

    instances_checked: int = 0
    instances_unreachable: int = 0
    outputs_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def verify_record(record: Mapping[str, Any], *, package_dir: Path | None = None) -> AuditReport:
    """Check a provenance record against the files it names.

    The checks are: each volume's digest equals the series digest of its
    instances' ``pixel_sha256`` values; each instance whose location is a local
    file still has its recorded ``file_sha256``; and each output with a recorded
    SHA-256 still has it, relative paths being read under ``package_dir``.
    Instances at a URL or a path that no longer exists are counted as
    unreachable, not as problems.

    Parameters
    ----------
    record
        A loaded ``provenance.json``.
    package_dir
        The folder that relative output paths are resolved against; outputs are
        skipped when it is ``None``.
    """
    report = AuditReport()
    _check_volume_digests(record, report)

    for role, instances in record["instances"].items():
        for instance in instances:
            path = Path(instance["location"])
            if "://" in instance["location"] or not path.is_file():
                report.instances_unreachable += 1
                continue
            report.instances_checked += 1
            found = file_sha256(path)
            if found != instance["file_sha256"]:
                report.problems.append(
                    f"{path}: {role} instance {instance['sop_instance_uid']} has SHA-256 "
                    f"{found}, expected {instance['file_sha256']}"
                )

    if package_dir is not None:
        for output in record["outputs"]:
            if not output.get("sha256"):
                continue
            path = Path(output["path"])
            path = path if path.is_absolute() else package_dir / path
            report.outputs_checked += 1
            if not path.is_file():
                report.problems.append(f"{path}: output {output['name']} not found")
            elif (found := file_sha256(path)) != output["sha256"]:
                report.problems.append(
                    f"{path}: output {output['name']} has SHA-256 {found}, "
                    f"expected {output['sha256']}"
                )

    logger.info(
        "audit of job %s: %d instances checked, %d unreachable, %d outputs checked, %d problems",
        record.get("job_id"),
        report.instances_checked,
        report.instances_unreachable,
        report.outputs_checked,
        len(report.problems),
    )
    return report


def volume_digest_problems(record: Mapping[str, Any]) -> list[str]:
    """Check that each volume's digest follows from the ``pixel_sha256`` of its instances.

    A match shows that the record lists every instance behind the volume.

    Returns
    -------
    list of str
        One message per volume whose digest does not follow; empty when all do.
    """
    report = AuditReport()
    _check_volume_digests(record, report)
    return report.problems


def _check_volume_digests(record: Mapping[str, Any], report: AuditReport) -> None:
    for volume in record["volumes"]:
        uid = volume["series_instance_uid"]
        hashes = {
            instance["sop_instance_uid"]: instance["pixel_sha256"]
            for instance in record["instances"][volume["role"]]
            if instance["series_instance_uid"] == uid
        }
        if not hashes:
            report.problems.append(f"{volume['role']} volume of series {uid}: no instances")
            continue
        try:
            found = series_digest(hashes)
        except ValueError as err:
            report.problems.append(f"{volume['role']} volume of series {uid}: {err}")
            continue
        if found != volume["digest"]:
            report.problems.append(
                f"{volume['role']} volume of series {uid}: digest of its instances is "
                f"{found}, expected {volume['digest']}"
            )


# Instance checks of ``priors audit verify`` ------------------------------------

UNCHANGED = "unchanged"
CHANGED = "changed"
MISSING = "missing"

# Separates a ZIP archive from a member name in an instance location, as the
# archive reader of ``priors.sources`` writes it: ``/data/site.zip!DICOM/IM1``.
ZIP_MEMBER_SEPARATOR = "!"

PixelFetcher = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class InstanceCheck:
    """Outcome of re-reading one instance named in a provenance record.

    Attributes
    ----------
    role
        ``"current"`` or ``"prior"``.
    sop_instance_uid, location
        The instance and where it was read when the job ran.
    status
        ``"unchanged"``, ``"changed"`` or ``"missing"``.
    detail
        The hash compared and the values found and expected, or why it is missing.
    """

    role: str
    sop_instance_uid: str
    location: str
    status: str
    detail: str


def verify_instances(
    record: Mapping[str, Any], *, fetch_pixel_sha256: PixelFetcher | None = None
) -> list[InstanceCheck]:
    """Re-read every instance of a provenance record from its recorded location.

    An instance whose file is still there is ``unchanged`` when its SHA-256 equals
    the recorded ``file_sha256`` and ``changed`` otherwise. When the file is gone,
    ``fetch_pixel_sha256`` (when given) fetches the instance through its source and
    returns the SHA-256 of its decoded pixel data, or ``None`` when the source
    cannot provide it. That value is compared with ``pixel_sha256``, because a copy
    fetched again may be encoded differently. An instance neither read nor fetched
    is ``missing``.

    Parameters
    ----------
    record
        A loaded ``provenance.json``.
    fetch_pixel_sha256
        Called with the instance entry of the record. Folder and media sources
        have no copy apart from the file itself, so callers pass ``None`` for them.

    Returns
    -------
    list of InstanceCheck
        One per instance entry, current instances first.
    """
    checks = []
    for role, instances in record["instances"].items():
        for instance in instances:
            checks.append(_check_instance(role, instance, fetch_pixel_sha256))
    counts = {status: 0 for status in (UNCHANGED, CHANGED, MISSING)}
    for check in checks:
        counts[check.status] += 1
    logger.info(
        "re-read %d instances of job %s: %d unchanged, %d changed, %d missing",
        len(checks),
        record.get("job_id"),
        counts[UNCHANGED],
        counts[CHANGED],
        counts[MISSING],
    )
    return checks


def location_sha256(location: str) -> str | None:
    """Return the SHA-256 of the bytes at an instance location, or None when gone.

    A location is a file path, or ``<archive>.zip!<member>`` for a ZIP member.
    URLs are not read here and return None.

    Raises
    ------
    OSError
        When the file exists but cannot be read (permissions, I/O error).
    """
    if "://" in location:
        return None
    path = Path(location)
    if path.is_file():
        return file_sha256(path)
    archive, separator, member = location.partition(ZIP_MEMBER_SEPARATOR)
    if separator and Path(archive).is_file():
        return _zip_member_sha256(Path(archive), member)
    return None


def _check_instance(
    role: str, instance: Mapping[str, Any], fetch_pixel_sha256: PixelFetcher | None
) -> InstanceCheck:
    uid = instance["sop_instance_uid"]
    location = instance["location"]

    def result(status: str, detail: str) -> InstanceCheck:
        return InstanceCheck(role, uid, location, status, detail)

    try:
        found = location_sha256(location)
    except OSError as err:
        return result(MISSING, f"cannot be read: {err}")
    expected = instance["file_sha256"]
    if found is not None:
        if found == expected:
            return result(UNCHANGED, f"file_sha256 {found}")
        return result(CHANGED, f"file_sha256 is {found}, expected {expected}")

    if fetch_pixel_sha256 is None:
        return result(MISSING, "file not found at its recorded location")
    fetched = fetch_pixel_sha256(instance)
    if fetched is None:
        return result(MISSING, "file not found, and its source cannot fetch the instance")
    expected_pixels = instance.get("pixel_sha256")
    if fetched == expected_pixels:
        return result(UNCHANGED, f"file gone; fetched pixel_sha256 {fetched} matches")
    return result(
        CHANGED, f"file gone; fetched pixel_sha256 is {fetched}, expected {expected_pixels}"
    )


def _zip_member_sha256(archive: Path, member: str) -> str | None:
    import hashlib
    import zipfile

    try:
        with zipfile.ZipFile(archive) as bundle, bundle.open(member) as stream:
            digest = hashlib.sha256()
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()
    except KeyError:
        return None
    except zipfile.BadZipFile as err:
        raise OSError(f"{archive}: not a readable ZIP archive ({err})") from err
