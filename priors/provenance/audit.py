"""Audit checks: does a provenance record still match the files it names?"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from priors.provenance.digests import file_sha256, series_digest

__all__ = ["AuditReport", "verify_record"]

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
