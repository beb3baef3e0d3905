"""Command line of priors: argument parsing only.

Each subcommand imports its implementation when it runs, so ``priors --help`` does
not pay for importing MONAI, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from priors import __version__
from priors.argtypes import positive_int

__all__ = ["build_parser", "main"]

log = logging.getLogger("priors")

CONVERT_GAP_POLICIES = ("split", "resample", "reject")
CONVERT_TILT_POLICIES = ("resample", "keep", "reject")
CONVERT_TEMPORAL_POLICIES = ("split", "first", "4d", "reject")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``priors`` command."""
    parser = argparse.ArgumentParser(
        prog="priors",
        description="Find priors, register them onto the current scan, detect change, "
        "and record provenance.",
    )
    parser.add_argument("--version", action="version", version=f"priors {__version__}")
    parser.add_argument("--config", help="TOML configuration file (default: $PRIORS_CONFIG)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output: priors logs its progress at INFO by default; "
                        "-v adds its DEBUG details, -vv the libraries' own logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser(
        "prepare", help="run the main job: ingest, link, select priors, register, detect change")
    prepare.add_argument("sources", nargs="+", metavar="SOURCE",
                         help="folder, ZIP file, DICOMDIR media folder, or a PACS name "
                         "(its instances fetched so far)")
    prepare.add_argument("--out", default="priors-packages",
                         help="folder for the context packages (default: %(default)s)")
    prepare.add_argument("--issuer", action="append", default=[], metavar="SOURCE=ISSUER",
                         help="issuer of Patient ID for a source without one; repeatable")
    prepare.add_argument("--job-name", default="prepare", help="MLflow parent run name")
    prepare.add_argument("--no-ray", action="store_true",
                         help="run the per-person work in this process instead of on Ray")
    prepare.add_argument("--report", help="also write the job report as JSON to this file")
    prepare.add_argument("--cross-reference", metavar="CSV",
                         help="CSV of records known to be one person: issuer_a, id_a, "
                         "issuer_b, id_b (as a PIX manager exports them)")

    demo = commands.add_parser(
        "demo", help="write the synthetic cohort (once) and run the main job on it")
    demo.add_argument("--cohort", help="cohort folder (default: $PRIORS_HOME/demo/cohort)")
    demo.add_argument("--out", help="package folder (default: $PRIORS_HOME/demo/packages)")
    demo.add_argument("--seed", type=int, default=0, help="cohort seed (default: %(default)s)")
    demo.add_argument("--no-ray", action="store_true",
                      help="run the per-person work in this process instead of on Ray")

    synthetic = commands.add_parser("synthetic", help="write the synthetic cohort as DICOM")
    synthetic.add_argument("out", help="output folder")
    synthetic.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    synthetic.add_argument("--patients", type=int, default=3, help="number of patients")
    synthetic.add_argument("--timepoints", type=int, default=3, help="time points per patient")

    ingest = commands.add_parser("ingest", help="index sources into the catalog")
    ingest.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="folder, ZIP file, DICOMDIR media folder, or a PACS name "
                        "(its instances fetched so far)")
    ingest.add_argument("--issuer", action="append", default=[], metavar="SOURCE=ISSUER",
                        help="issuer of Patient ID for a source without one; repeatable")
    ingest.add_argument("--workers", type=positive_int, default=2,
                        help="header-reading processes (default: %(default)s)")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")

    find = commands.add_parser("find", help="search a PACS for studies (DICOMweb or DIMSE)")
    find.add_argument("pacs", metavar="PACS",
                      help="name under [sources] in the configuration, dicomweb:<url> or "
                      "dimse:<AE>@<host>:<port>")
    _add_query_arguments(find)
    find.add_argument("--series", action="store_true", help="also list each study's series")
    find.add_argument("--json", action="store_true", help="print JSON to standard output")

    fetch = commands.add_parser(
        "fetch", help="retrieve matching studies from a PACS and ingest them")
    fetch.add_argument("pacs", metavar="PACS",
                       help="name under [sources] in the configuration, dicomweb:<url> or "
                       "dimse:<AE>@<host>:<port>")
    _add_query_arguments(fetch)
    fetch.add_argument("--series-uid", default="",
                       help="only this series of the study given by --study-uid")
    fetch.add_argument("--all", action="store_true",
                       help="fetch every study that matches, even with no patient, study or "
                       "date filter (the whole PACS, when nothing else is given)")
    fetch.add_argument("--workers", type=positive_int, default=2,
                       help="header-reading processes (default: %(default)s)")
    fetch.add_argument("--json", action="store_true", help="print the result as JSON")

    timeline = commands.add_parser(
        "timeline", help="show each person's linked studies and the chosen pairs")
    timeline.add_argument("sources", nargs="+", metavar="SOURCE")
    timeline.add_argument("--issuer", action="append", default=[], metavar="SOURCE=ISSUER")
    timeline.add_argument("--person", help="only this person pseudonym")
    timeline.add_argument("--json", action="store_true", help="print JSON to standard output")
    timeline.add_argument("--explain", action="store_true",
                          help="list every selection decision with its reason")
    timeline.add_argument("--chart", help="write a PNG chart of studies over time")
    timeline.add_argument("--cross-reference", metavar="CSV",
                          help="CSV of records known to be one person: issuer_a, id_a, "
                          "issuer_b, id_b")

    register = commands.add_parser(
        "register", help="register a prior volume onto a current one")
    register.add_argument("current", help="DICOM series folder or NIfTI file")
    register.add_argument("prior", help="DICOM series folder or NIfTI file")
    register.add_argument("--out", required=True, help="output folder")
    register.add_argument("--modality-pair", default=None,
                          help="preset: CT-CT, MR-MR or CT-MR (default: from the data)")
    register.add_argument("--stages", default=None, metavar="STAGES",
                          help="comma-separated stages: rigid, optionally affine and bspline "
                          "(default: from the configuration, rigid only)")
    register.add_argument("--metric", choices=("auto", "mattes", "correlation"), default=None,
                          help="registration metric; auto is correlation for CT-CT and "
                          "Mattes mutual information otherwise (default: from the "
                          "configuration, auto)")
    register.add_argument("--inverse-consistency", action="store_true", default=None,
                          help="also register the current onto the prior and report "
                          "|reverse(forward(p)) - p| over the body, mm")
    register.add_argument("--seed", type=int, default=None,
                          help="metric sampling seed (default: from the configuration)")
    register.add_argument("--threads", type=int, default=None,
                          help="ITK threads; 1 gives identical results on every run "
                          "(default: from the configuration, 1)")

    convert = commands.add_parser("convert", help="build volumes from DICOM and write NIfTI")
    convert.add_argument("sources", nargs="+", metavar="SOURCE")
    convert.add_argument("--out", required=True, help="output folder")
    # Choices repeat priors.dicom.volume's policy constants, kept here so that --help
    # does not import the DICOM stack; a test checks that the two agree.
    convert.add_argument("--gap-policy", choices=CONVERT_GAP_POLICIES, default="split",
                         help="missing slices or uneven spacing: split into uniform blocks, "
                         "resample onto the median step, or reject (default: %(default)s)")
    convert.add_argument("--tilt-policy", choices=CONVERT_TILT_POLICIES, default="resample",
                         help="gantry tilt: resample onto a rectilinear grid, keep the sheared "
                         "geometry, or reject (default: %(default)s)")
    convert.add_argument("--temporal-policy", choices=CONVERT_TEMPORAL_POLICIES,
                         default="split",
                         help="several volumes at the same positions: one volume per time "
                         "point, the first only, one 4-D image, or reject (default: %(default)s)")
    convert.add_argument("--min-slices", type=positive_int, default=3,
                         help="fewest slices that make a volume (default: %(default)s)")

    audit = commands.add_parser(
        "audit", help="check and trace provenance recorded in MLflow")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True,
                                          metavar="AUDIT_COMMAND")
    verify = audit_commands.add_parser(
        "verify", help="re-read every instance of a pair run and compare its file_sha256")
    verify.add_argument("run_id", metavar="RUN_ID", help="MLflow run id of a pair")
    trace = audit_commands.add_parser(
        "trace", help="list every pair run and output that used an instance")
    trace.add_argument("sop_instance_uid", metavar="SOP_INSTANCE_UID")
    trace.add_argument("--series", action="append", default=[], metavar="SERIES_INSTANCE_UID",
                       help="the instance's series, to read only runs of it; repeatable "
                       "(default: from the catalog)")
    trace.add_argument("--no-catalog", action="store_true",
                       help="do not look the series up in the catalog; read every pair run")
    lineage = audit_commands.add_parser(
        "report", help="write a readable lineage report of one pair run")
    lineage.add_argument("run_id", metavar="RUN_ID", help="MLflow run id of a pair")
    lineage.add_argument("--format", choices=("markdown", "html"), default="markdown",
                         help="report format (default: %(default)s)")
    lineage.add_argument("--out", help="output file (default: standard output)")
    return parser



def _add_query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient-id", default="", help="Patient ID at that PACS")
    parser.add_argument("--issuer-of-patient-id", default="",
                        help="Issuer of Patient ID, where the PACS records it")
    parser.add_argument("--study-date", default="",
                        help="date or range: YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD or "
                        "YYYYMMDD-")
    parser.add_argument("--modality", default="", help="for example CT or MR")
    parser.add_argument("--study-uid", default="", help="one Study Instance UID")


def _query(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from priors.sources.remote import StudyQuery

    try:
        return StudyQuery(patient_id=args.patient_id,
                          issuer_of_patient_id=args.issuer_of_patient_id,
                          study_date=args.study_date, modality=args.modality,
                          study_instance_uid=args.study_uid)
    except ValueError as err:
        raise SystemExit(f"priors: --study-date: {err}") from err


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: object = None, line: str | None = None) -> None:
    logging.getLogger("priors.warnings").debug("%s: %s", category.__name__, message)


def _configure_logging(verbosity: int) -> None:
    # priors' own progress at INFO (DEBUG with -v); other libraries' WARNING and up,
    # except with -vv.
    logging.basicConfig(
        level=logging.DEBUG if verbosity > 1 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("priors").setLevel(logging.DEBUG if verbosity else logging.INFO)
    if verbosity < 2:
        for noisy in ("alembic", "mlflow", "urllib3", "ray", "matplotlib", "PIL",
                      "pynetdicom"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # pydicom logs each decoder plugin's failure with a traceback at ERROR; priors
    # reports every decoder's reason in one line of its own.
    # pydicom resets the level of its own top logger when imported, so the level goes
    # on the decoders' logger.
    if verbosity < 2:
        logging.getLogger("pydicom.pixels").setLevel(logging.CRITICAL)
    # Python warnings (a dropped duplicate slice, an odd header value) become one log
    # line each at DEBUG, shown with -v. The decisions are also in the JSON outputs.
    warnings.showwarning = _log_warning
    # urllib3's DEBUG lines carry each request's query string, and a QIDO-RS search
    # carries the Patient ID there, so even -vv keeps them off.
    logging.getLogger("urllib3").setLevel(max(logging.getLogger("urllib3").level,
                                              logging.INFO))


def _issuers(pairs: Sequence[str]) -> dict[str, str]:
    issuers: dict[str, str] = {}
    for item in pairs:
        source, sep, issuer = item.partition("=")
        if not sep or not source or not issuer:
            raise SystemExit(f"priors: --issuer {item!r} is invalid; expected SOURCE=ISSUER")
        issuers[str(Path(source).resolve())] = issuer
    return issuers


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``priors`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)

    from priors.config import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        print(f"priors: {err}", file=sys.stderr)
        return EXIT_USAGE

    handler = _COMMANDS[args.command]
    try:
        return handler(args, settings)
    except (FileNotFoundError, NotADirectoryError, ConfigError) as err:
        # A missing or wrong-kind source is a usage error, not a crash.
        print(f"priors: {err}", file=sys.stderr)
        return EXIT_USAGE


def _run_prepare(args: argparse.Namespace, settings) -> int:
    from priors.distributed import run_prepare_job

    report = run_prepare_job(
        args.sources, out_dir=Path(args.out), settings=settings,
        issuers=_issuers(args.issuer), job_name=args.job_name, use_ray=not args.no_ray,
        cross_reference=args.cross_reference)
    _finish_report(report, args.report)
    return EXIT_OK if report.ok else EXIT_FAILED


def _run_demo(args: argparse.Namespace, settings) -> int:
    from priors.distributed import run_demo

    report = run_demo(settings=settings, seed=args.seed,
                      cohort_dir=Path(args.cohort) if args.cohort else None,
                      out_dir=Path(args.out) if args.out else None, use_ray=not args.no_ray)
    _finish_report(report, None)
    return EXIT_OK if report.ok else EXIT_FAILED


def _finish_report(report, json_path: str | None) -> None:
    print(report.render_text())
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")


def _run_synthetic(args: argparse.Namespace, settings) -> int:
    from priors.synthetic import write_cohort

    info = write_cohort(args.out, seed=args.seed, n_patients=args.patients,
                        n_timepoints=args.timepoints)
    print(f"wrote the synthetic cohort to {Path(args.out).resolve()}")
    print(f"ground truth: {info.ground_truth}")
    return EXIT_OK


def _run_ingest(args: argparse.Namespace, settings) -> int:
    from priors.catalog import Catalog
    from priors.sources.pacs import open_sources
    from priors.sources.remote import RetrievalCache

    sources = open_sources(args.sources, configured=settings.sources,
                           issuers=_issuers(args.issuer),
                           cache=RetrievalCache(Path(settings.home) / "cache" / "pacs"))
    # The catalog contains identifiers, so a home folder priors creates is private.
    Path(settings.home).mkdir(parents=True, exist_ok=True, mode=0o700)
    catalog = Catalog(settings.catalog_url)
    report = catalog.ingest(sources, workers=args.workers, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render_text())
    return EXIT_OK


def _run_find(args: argparse.Namespace, settings) -> int:
    from priors.fetch_command import find_command

    return find_command(args.pacs, settings=settings, query=_query(args),
                        with_series=args.series, as_json=args.json)


def _run_fetch(args: argparse.Namespace, settings) -> int:
    from priors.fetch_command import fetch_command

    if args.series_uid and not args.study_uid:
        raise SystemExit("priors fetch: --series-uid needs --study-uid, the series' study")
    if not (args.patient_id or args.study_uid or args.study_date or args.all):
        raise SystemExit("priors fetch: give --patient-id, --study-uid or --study-date, or "
                         "--all to fetch every study that matches")
    return fetch_command(args.pacs, settings=settings, query=_query(args),
                         series_instance_uid=args.series_uid, as_json=args.json,
                         workers=args.workers)


def _run_timeline(args: argparse.Namespace, settings) -> int:
    from priors.commands import timeline_command

    return timeline_command(
        args.sources, settings=settings, issuers=_issuers(args.issuer), person=args.person,
        as_json=args.json, explain=args.explain, chart=args.chart,
        cross_reference=args.cross_reference)


def _run_register(args: argparse.Namespace, settings) -> int:
    from priors.register_command import InputError, run_register, with_command_options

    try:
        registration = with_command_options(
            settings.registration, stages=args.stages, metric=args.metric,
            inverse_consistency=args.inverse_consistency, seed=args.seed, threads=args.threads)
    except InputError as err:
        print(f"priors: {err}", file=sys.stderr)
        return EXIT_USAGE
    return run_register(Path(args.current), Path(args.prior), out_dir=Path(args.out),
                        settings=registration, modality_pair=args.modality_pair)


def _run_convert(args: argparse.Namespace, settings) -> int:
    from priors.commands import convert_command

    return convert_command(args.sources, out_dir=Path(args.out), gap_policy=args.gap_policy,
                           tilt_policy=args.tilt_policy, temporal_policy=args.temporal_policy,
                           min_slices=args.min_slices)


def _run_audit(args: argparse.Namespace, settings) -> int:
    from priors import audit_command

    if args.audit_command == "verify":
        return audit_command.verify_command(args.run_id, settings=settings)
    if args.audit_command == "trace":
        return audit_command.trace_command(
            args.sop_instance_uid, settings=settings, series_instance_uids=args.series,
            use_catalog=not args.no_catalog)
    return audit_command.report_command(
        args.run_id, settings=settings, fmt=args.format,
        out_path=Path(args.out) if args.out else None)


_COMMANDS = {
    "prepare": _run_prepare,
    "demo": _run_demo,
    "synthetic": _run_synthetic,
    "ingest": _run_ingest,
    "find": _run_find,
    "fetch": _run_fetch,
    "timeline": _run_timeline,
    "register": _run_register,
    "convert": _run_convert,
    "audit": _run_audit,
}


if __name__ == "__main__":
    sys.exit(main())
