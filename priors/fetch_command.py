"""``priors find`` and ``priors fetch``: search a PACS, and pull studies into the catalog.

``find`` only searches. ``fetch`` retrieves the matching studies (or only their series of
one modality) into the retrieval cache and then ingests the source, so the catalog
accounts for every instance received; ``priors prepare <PACS name>`` then works on
them as on a folder. Patient IDs are shown as keyed pseudonyms, never in clear.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from priors.config import Settings
from priors.sources.remote import (
    RemoteSource,
    RetrievalCache,
    RetrieveError,
    RetrieveResult,
    SourceConnectionError,
    StudyMatch,
    StudyQuery,
)

__all__ = ["fetch_command", "find_command", "open_pacs"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


def open_pacs(spec: str, settings: Settings) -> RemoteSource:
    """Open a configured or ad hoc PACS with the cache under the priors home folder.

    The home folder is created readable by its owner only, since the cache and the
    catalog hold identifiers.
    """
    from priors.sources.pacs import open_remote_source

    Path(settings.home).mkdir(parents=True, exist_ok=True, mode=0o700)
    return open_remote_source(spec, settings.sources,
                              cache=RetrievalCache(Path(settings.home) / "cache" / "pacs"))


def find_command(
    spec: str,
    *,
    settings: Settings,
    query: StudyQuery,
    with_series: bool = False,
    as_json: bool = False,
) -> int:
    """Print the studies (and optionally series) a PACS holds for a query.

    Returns
    -------
    int
        0 on success, 1 when the PACS cannot be reached or refuses the query.
    """
    source = open_pacs(spec, settings)
    pseudonyms = _pseudonymizer(settings)
    try:
        studies = source.find_studies(query)
        series = ({study.study_instance_uid: source.find_series(study.study_instance_uid,
                                                                modality=query.modality)
                   for study in studies} if with_series else {})
    except (SourceConnectionError, RetrieveError) as err:
        print(f"priors: {source.source_id}: {err}", file=sys.stderr)
        return EXIT_FAILED

    rows = [_study_row(study, pseudonyms)
            for study in sorted(studies, key=lambda item: (item.study_date,
                                                           item.study_instance_uid))]
    if as_json:
        for row in rows:
            if with_series:
                row["series"] = [asdict(item) for item in series[row["study_instance_uid"]]]
        print(json.dumps({"source": source.describe(), "studies": rows}, indent=2))
        return EXIT_OK
    print(f"{_plural(len(rows), 'study', 'studies')} at {source.source_id}")
    for row in rows:
        print(f"  {row['study_date'] or '--------'}  {'/'.join(row['modalities']) or '-':<8} "
              f"{row['patient_pseudonym']}  {row['study_instance_uid']}  "
              f"{_count(row['number_of_instances'])}  {row['study_description']}")
        listed = sorted(series.get(row["study_instance_uid"], []),
                        key=lambda item: (item.series_number is None, item.series_number or 0))
        for item in listed:
            number = item.series_number if item.series_number is not None else "-"
            print(f"      series {number}  {item.modality:<3} {item.series_instance_uid}  "
                  f"{_count(item.number_of_instances)}  {item.series_description}")
    return EXIT_OK


def fetch_command(
    spec: str,
    *,
    settings: Settings,
    query: StudyQuery,
    series_instance_uid: str = "",
    as_json: bool = False,
    workers: int = 2,
) -> int:
    """Retrieve the matching studies into the cache and ingest them into the catalog.

    With ``query.modality`` set, only that modality's series are retrieved. Each study
    that fails is reported and the others are still fetched.

    Returns
    -------
    int
        0 when every retrieve succeeded, 1 when any failed or the PACS was unreachable.
    """
    from priors.catalog import Catalog

    source = open_pacs(spec, settings)
    try:
        studies = source.find_studies(query)
    except (SourceConnectionError, RetrieveError) as err:
        print(f"priors: {source.source_id}: {err}", file=sys.stderr)
        return EXIT_FAILED
    if not studies:
        print(f"priors: {source.source_id}: no study matches the query", file=sys.stderr)
        return EXIT_FAILED

    results: list[RetrieveResult] = []
    failures: list[dict[str, str]] = []
    # Instances that arrived during retrieves that then failed: they are in the cache
    # and the catalog, so the summary counts them too.
    partial = 0
    for number, study in enumerate(studies, start=1):
        targets = _targets(source, study, modality=query.modality,
                           series_instance_uid=series_instance_uid, failures=failures)
        for series_uid in targets:
            label = f"study {number}/{len(studies)} {study.study_instance_uid}" + (
                f" series {series_uid}" if series_uid else "")
            try:
                result = source.retrieve(study.study_instance_uid,
                                         series_instance_uid=series_uid)
            except (SourceConnectionError, RetrieveError) as err:
                log.error("%s: %s", label, err)
                arrived = getattr(err, "result", None)
                partial += len(arrived.files) if arrived is not None else 0
                failures.append({"study_instance_uid": study.study_instance_uid,
                                 "series_instance_uid": series_uid, "reason": str(err)})
                continue
            log.info("%s: %d instances in %.1f s", label, len(result.files), result.seconds)
            print(f"{label}: {len(result.files)} instances "
                  f"(completed {result.completed}, failed {result.failed}, "
                  f"warning {result.warning}) in {result.seconds:.1f} s", file=sys.stderr)
            results.append(result)

    # The catalog contains identifiers, so a home folder priors creates is private.
    Path(settings.home).mkdir(parents=True, exist_ok=True, mode=0o700)
    catalog = Catalog(settings.catalog_url)
    try:
        report = catalog.ingest([source], workers=workers, progress=sys.stderr.isatty())
    finally:
        catalog.close()

    if as_json:
        print(json.dumps({
            "source": source.describe(),
            "retrieved": [result.as_dict() for result in results],
            "failed": failures,
            "received_in_failed_retrieves": partial,
            "ingest": report.to_dict(),
        }, indent=2))
    else:
        received = sum(len(result.files) for result in results) + partial
        retrieves = _plural(len(results) + len(failures), "retrieve", "retrieves")
        before_failure = (f" ({_plural(partial, 'instance', 'instances')} of them arrived "
                          "before a failure)" if partial else "")
        print(f"{_plural(received, 'instance', 'instances')} received from "
              f"{source.source_id} in {retrieves}; {len(failures)} failed{before_failure}")
        for failure in failures:
            target = " ".join(filter(None, (failure["study_instance_uid"],
                                            failure["series_instance_uid"])))
            print(f"  failed: {target}: {failure['reason']}")
        print(report.render_text())
    return EXIT_FAILED if failures else EXIT_OK


def _targets(source: RemoteSource, study: StudyMatch, *, modality: str,
             series_instance_uid: str, failures: list[dict[str, str]]) -> list[str]:
    """Return the series to retrieve of a study; ``[""]`` means the whole study."""
    if series_instance_uid:
        return [series_instance_uid]
    if not modality:
        return [""]
    try:
        matches = source.find_series(study.study_instance_uid, modality=modality)
    except (SourceConnectionError, RetrieveError) as err:
        failures.append({"study_instance_uid": study.study_instance_uid,
                         "series_instance_uid": "", "reason": str(err)})
        return []
    return [item.series_instance_uid for item in matches]


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _count(instances: int | None) -> str:
    return "? instances" if instances is None else _plural(instances, "instance", "instances")


def _pseudonymizer(settings: Settings) -> Any:
    from priors.pseudonym import Pseudonymizer, load_key

    return Pseudonymizer(load_key(settings.home, configured=settings.pseudonym_key))


def _study_row(study: StudyMatch, pseudonyms: Any) -> dict[str, Any]:
    row = asdict(study)
    patient_id = row.pop("patient_id")
    row.pop("accession_number")
    row["patient_pseudonym"] = (pseudonyms.record(study.issuer_of_patient_id, patient_id)
                                if patient_id else "")
    row["modalities"] = list(study.modalities)
    return row
