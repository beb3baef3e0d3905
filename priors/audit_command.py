"""The ``priors audit`` subcommands: verify, trace and report, over the MLflow store.

Thin wrappers that print what ``priors.provenance.audit`` and
``priors.provenance.lineage`` return. Exit status 0 means the check passed, 1 that
it found a changed or missing instance (or no run for a traced instance), and 2 that
the run or experiment was not found.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from priors.config import Settings

__all__ = ["EXIT_FOUND_PROBLEMS", "EXIT_NOT_FOUND", "EXIT_OK", "report_command",
           "trace_command", "verify_command"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FOUND_PROBLEMS = 1
EXIT_NOT_FOUND = 2

PREVIEW_ARTIFACT = "preview.png"


def _quiet_downloads() -> None:
    # MLflow draws a progress bar on standard error for every artifact download.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def verify_command(run_id: str, *, settings: Settings, stream: TextIO | None = None) -> int:
    """Re-read every instance of a pair run's ``provenance.json`` and print the outcome.

    Prints one line per instance (unchanged, changed or missing) and a summary.
    Folder and media sources have no copy apart from the file, so a file that is
    gone is reported missing rather than fetched again.

    Returns
    -------
    int
        0 when every instance is unchanged and the volume digests follow from the
        recorded instances, 1 otherwise, 2 when the run has no ``provenance.json``.
    """
    from priors.provenance.audit import (
        CHANGED,
        MISSING,
        UNCHANGED,
        verify_instances,
        volume_digest_problems,
    )
    from priors.provenance.lineage import PROVENANCE_ARTIFACT, load_run_json, open_client

    _quiet_downloads()
    out = stream or sys.stdout
    client = open_client(settings.mlflow_tracking_uri)
    try:
        record = load_run_json(client, run_id, PROVENANCE_ARTIFACT)
    except FileNotFoundError as err:
        print(f"priors audit verify: {err}", file=sys.stderr)
        return EXIT_NOT_FOUND

    checks = verify_instances(record)
    for check in checks:
        line = f"{check.status:<9} {check.role:<7} {check.sop_instance_uid} {check.location}"
        if check.status != UNCHANGED:
            line += f": {check.detail}"
        print(line, file=out)
    problems = volume_digest_problems(record)
    for problem in problems:
        print(f"record    {problem}", file=out)

    counts = {status: sum(check.status == status for check in checks)
              for status in (UNCHANGED, CHANGED, MISSING)}
    print(
        f"run {run_id}: {len(checks)} instances: {counts[UNCHANGED]} unchanged, "
        f"{counts[CHANGED]} changed, {counts[MISSING]} missing; "
        + ("volume digests match the instances" if not problems
           else f"{len(problems)} volume digest problems"),
        file=out,
    )
    failed = counts[CHANGED] or counts[MISSING] or problems
    return EXIT_FOUND_PROBLEMS if failed else EXIT_OK


def trace_command(
    sop_instance_uid: str,
    *,
    settings: Settings,
    series_instance_uids: Sequence[str] = (),
    use_catalog: bool = True,
    stream: TextIO | None = None,
) -> int:
    """Print every pair run, and its outputs, that used a SOP Instance UID.

    The instance's series is taken from ``series_instance_uids`` or else from the
    catalog, and only pair runs tagged with that series are read. Without a known
    series every pair run's ``lineage.json`` is read once and cached under the
    priors home folder.

    Returns
    -------
    int
        0 when at least one run used the instance, 1 when none did, 2 when the
        experiment does not exist.
    """
    from priors.provenance.lineage import find_instance_uses, open_client

    _quiet_downloads()
    out = stream or sys.stdout
    client = open_client(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        print(f"priors audit trace: MLflow experiment {settings.mlflow_experiment!r} not "
              f"found in {settings.mlflow_tracking_uri}", file=sys.stderr)
        return EXIT_NOT_FOUND

    series = list(series_instance_uids)
    if not series and use_catalog:
        series = _series_from_catalog(settings, sop_instance_uid)
    uses = find_instance_uses(
        client, sop_instance_uid, experiment_ids=[experiment.experiment_id],
        series_instance_uids=series, cache_dir=Path(settings.home) / "audit-cache" / "lineage")

    print(f"instance {sop_instance_uid}: used by {len(uses)} pair runs", file=out)
    for use in uses:
        print(f"run {use.run_id} {use.status} {use.run_name!r} (job run {use.job_run_id}) as "
              f"{use.role}", file=out)
        print(f"  location {use.location}", file=out)
        print(f"  file_sha256 {use.file_sha256} pixel_sha256 {use.pixel_sha256}", file=out)
        for output in use.outputs:
            print(f"  output {output['path']} sha256 {output['sha256']}", file=out)
    return EXIT_OK if uses else EXIT_FOUND_PROBLEMS


def report_command(
    run_id: str, *, settings: Settings, fmt: str = "markdown", out_path: Path | None = None,
    stream: TextIO | None = None,
) -> int:
    """Render the lineage report of one pair run, to ``out_path`` or standard output.

    HTML embeds the preview image. Markdown written to a file links a copy of the
    preview saved next to it (``<name>.preview.png``); Markdown on standard output
    links the preview artifact's URI.

    Returns
    -------
    int
        0, or 2 when the run has no ``provenance.json``.
    """
    from priors.provenance.lineage import collect_pair_lineage, open_client
    from priors.provenance.lineage_report import render_lineage_report

    _quiet_downloads()
    client = open_client(settings.mlflow_tracking_uri)
    try:
        lineage = collect_pair_lineage(client, run_id)
    except FileNotFoundError as err:
        print(f"priors audit report: {err}", file=sys.stderr)
        return EXIT_NOT_FOUND

    preview = None
    preview_link = None
    if PREVIEW_ARTIFACT in lineage["artifacts"]:
        with tempfile.TemporaryDirectory(prefix="priors-audit-") as folder:
            local = Path(client.download_artifacts(run_id, PREVIEW_ARTIFACT, folder))
            preview = local.read_bytes()
            if fmt == "markdown" and out_path is not None:
                copy = out_path.with_name(f"{out_path.stem}.preview.png")
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, copy)
                preview_link = copy.name
        if preview_link is None:
            preview_link = f"{lineage['run']['artifact_uri']}/{PREVIEW_ARTIFACT}"

    text = render_lineage_report(lineage, fmt=fmt, preview_png=preview,
                                 preview_link=preview_link)
    if out_path is None:
        (stream or sys.stdout).write(text)
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text, encoding="utf-8")
        log.info("wrote the lineage report of run %s to %s", run_id, out_path)
    return EXIT_OK


def _series_from_catalog(settings: Settings, sop_instance_uid: str) -> list[str]:
    """Return the Series Instance UIDs the catalog holds for an instance, if any."""
    prefix = "sqlite:///"
    url = settings.catalog_url
    if url.startswith(prefix) and not Path(url[len(prefix):]).is_file():
        log.info("no catalog at %s; searching every pair run", url)
        return []
    from priors.catalog import Catalog

    catalog = Catalog(url)
    try:
        rows = catalog.instances_by_uid(sop_instance_uid)
    finally:
        catalog.close()
    return sorted({row.series_instance_uid for row in rows})
