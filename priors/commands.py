"""Implementations of the smaller subcommands: timeline and convert."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from priors.config import Settings

__all__ = ["convert_command", "timeline_command"]

log = logging.getLogger(__name__)


def timeline_command(
    sources: Sequence[str],
    *,
    settings: Settings,
    issuers: Mapping[str, str],
    person: str | None = None,
    as_json: bool = False,
    explain: bool = False,
    chart: str | None = None,
    cross_reference: str | None = None,
) -> int:
    """Print each person's timeline and pairs; return the exit status.

    Parameters
    ----------
    sources
        Folders, ZIP files or DICOMDIR media folders.
    settings
        Loaded settings (catalog, pseudonym key, selection rules).
    issuers
        Issuer of Patient ID per resolved source path, for sources without one.
    person
        Only the person with this pseudonym; exit status 1 when no person has it.
    as_json
        Print the JSON document instead of the tables.
    explain
        After the tables, list every link, conflict and selection decision.
    chart
        Write a PNG chart of the studies over time per modality to this path.
    cross_reference
        CSV of (issuer_a, id_a, issuer_b, id_b) rows naming records of one person.

    Returns
    -------
    int
        0 on success, 1 for an unknown person, 2 for a missing source or a bad
        cross-reference table.
    """
    from priors.longitudinal.report import explain_text, render_timeline_table, timeline_json
    from priors.planning import gather_people

    try:
        people = gather_people(
            [Path(path) for path in sources], settings=settings, issuers=issuers,
            cross_reference=Path(cross_reference) if cross_reference else None)
    except (FileNotFoundError, ValueError) as err:
        print(f"priors: {err}", file=sys.stderr)
        return 2
    document = timeline_json(people.linkage, people.timelines, people.selections,
                             people.pseudonymizer)
    keep = [index for index, item in enumerate(people.linkage.persons)
            if person is None or item.pseudonym == person]
    if person is not None and not keep:
        print(f"priors: no person with pseudonym {person!r} in these sources; "
              f"{len(people.linkage.persons)} persons found", file=sys.stderr)
        return 1
    document["persons"] = [document["persons"][index] for index in keep]
    if as_json:
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        for index in keep:
            item = people.linkage.persons[index]
            studies = people.timelines[index]
            pairs = people.selections[index].pairs if people.selections[index] else []
            print(f"person {item.pseudonym}: {len(item.record_indices)} records, "
                  f"{len(studies)} studies, {len(pairs)} pairs")
            print(render_timeline_table(studies))
            print()
        if explain:
            print(explain_text(people.linkage, people.selections, persons=keep))
    if chart:
        _write_timeline_chart([people.timelines[index] for index in keep],
                              [people.linkage.persons[index].pseudonym for index in keep],
                              Path(chart), quiet=as_json)
    return 0


def _write_timeline_chart(timelines: Sequence[Sequence[Any]], names: Sequence[str], path: Path,
                          *, quiet: bool = False) -> None:
    """Draw one row per person and modality, one marker per dated study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, list]] = []
    for name, timeline in zip(names, timelines, strict=True):
        by_modality: dict[str, list] = {}
        for study in timeline:
            if study.date is None:
                continue
            for modality in study.modalities or ("?",):
                by_modality.setdefault(modality, []).append(study.date)
        for modality, dates in sorted(by_modality.items()):
            rows.append((f"{name} {modality}", dates))
    figure, axis = plt.subplots(figsize=(8, 0.5 + 0.4 * max(1, len(rows))), dpi=90)
    for index, (_, dates) in enumerate(rows):
        axis.plot(dates, [index] * len(dates), "o")
    axis.set_yticks(range(len(rows)), [label for label, _ in rows])
    axis.set_xlabel("study date")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    if quiet:
        log.info("wrote the timeline chart to %s", path)
    else:
        print(f"wrote the timeline chart to {path}")


def convert_command(sources: Sequence[str], *, out_dir: Path, **policies: Any) -> int:
    """Build every series' volumes and write NIfTI files with JSON sidecars.

    ``policies`` are the keyword options of ``run_convert`` (gap, tilt and temporal
    policies, minimum slice count).
    """
    from priors.dicom.convert import run_convert

    paths = []
    for text in sources:
        path = Path(text)
        # A DICOMDIR names its file set, the folder it sits in.
        if path.is_file() and path.name.upper().startswith("DICOMDIR"):
            log.info("%s: converting the file set in %s", path, path.parent)
            path = path.parent
        paths.append(path)
    return run_convert(paths, out_dir=out_dir, **policies)
