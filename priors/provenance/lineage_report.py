"""A human-readable lineage report of one pair run, in Markdown or HTML.

The report is built as a list of blocks (headings, paragraphs, tables, lists, an
image) from the data of ``priors.provenance.lineage.collect_pair_lineage``, then
written out in either format, so both formats show the same facts.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FORMATS", "render_lineage_report"]

FORMATS = ("markdown", "html")

NOT_RECORDED = "not recorded"
# Registration figures shown in the report; the run's metrics hold all of them.
REGISTRATION_PARAMETERS = (
    "modality_pair",
    "stages",
    "transform_class",
    "metric",
    "optimizer",
    "seed",
    "threads",
    "global_default_threads",
    "sampling_strategy",
    "sampling_fraction",
    "shrink_factors",
    "smoothing_sigmas_mm",
    "iterations",
)


@dataclass
class _Block:
    kind: str
    text: str = ""
    level: int = 2
    headers: Sequence[str] = ()
    rows: list[Sequence[Any]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)


def render_lineage_report(
    lineage: Mapping[str, Any],
    *,
    fmt: str = "markdown",
    preview_png: bytes | None = None,
    preview_link: str | None = None,
) -> str:
    """Render the lineage of one pair run.

    Parameters
    ----------
    lineage
        The output of ``collect_pair_lineage``.
    fmt
        ``"markdown"`` or ``"html"``.
    preview_png
        The pair's preview image; HTML embeds it as a data URI.
    preview_link
        Where Markdown links the preview image (a relative path or a URI).

    Raises
    ------
    ValueError
        When ``fmt`` is not one of ``FORMATS``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"report format is {fmt!r}, expected one of {', '.join(FORMATS)}")
    blocks = _report_blocks(lineage)
    blocks.append(_Block("heading", "Preview"))
    if fmt == "html" and preview_png is not None:
        blocks.append(_Block("image", base64.b64encode(preview_png).decode("ascii")))
    elif fmt == "markdown" and preview_link:
        blocks.append(_Block("image", preview_link))
    else:
        blocks.append(_Block("paragraph", "The run has no preview.png artifact."))
    if fmt == "html":
        return _to_html(blocks, title=blocks[0].text)
    return _to_markdown(blocks)


def _report_blocks(lineage: Mapping[str, Any]) -> list[_Block]:
    run = lineage["run"]
    record = lineage["provenance"]
    blocks = [_Block("heading", f"Lineage of pair run {run['run_name'] or run['run_id']}", 1)]
    blocks += _summary_blocks(run, record)
    blocks += _source_blocks(record, lineage["inputs"])
    blocks += _instance_blocks(record)
    blocks += _decision_blocks(record)
    blocks += _registration_blocks(record)
    blocks += _model_blocks(record, lineage["model"])
    blocks += _output_blocks(record, lineage["lineage"])
    blocks += _software_blocks(record)
    return blocks


def _summary_blocks(run: Mapping[str, Any], record: Mapping[str, Any]) -> list[_Block]:
    tags = run["tags"]
    rows = [
        ("MLflow run", run["run_id"]),
        ("status", run["status"]),
        ("started (UTC)", _utc(run["start_time_ms"])),
        ("job run", tags.get("priors.job_run_id", "")),
        ("person pseudonym", record.get("person_pseudonym", "")),
        ("pair key", tags.get("priors.pair_key", "")),
        ("current study / series", _pair_uids(tags, "current")),
        ("prior study / series", _pair_uids(tags, "prior")),
        ("modality", tags.get("priors.modality", "")),
        ("registration verdict", tags.get("priors.registration.verdict", "")),
        ("change method", tags.get("priors.change.method", "")),
        ("artifacts", run["artifact_uri"]),
    ]
    for name in ("priors.superseded_by", "priors.stale_reason", "priors.reason"):
        if tags.get(name):
            rows.append((name, tags[name]))
    return [_Block("table", headers=("field", "value"), rows=list(rows))]


def _source_blocks(record: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]]) -> list[_Block]:
    blocks = [_Block("heading", "Sources")]
    blocks.append(
        _Block(
            "table",
            headers=("kind", "source id", "root", "file-set id"),
            rows=[
                (item.get("kind", ""), item.get("source_id", ""), item.get("root", ""),
                 item.get("file_set_id", ""))
                for item in record.get("sources", [])
            ],
        )
    )
    blocks.append(_Block("heading", "Model inputs (MLflow datasets)"))
    blocks.append(
        _Block(
            "table",
            headers=("context", "dataset", "MLflow digest", "series digest", "source"),
            rows=[
                (item["context"], item["name"], item["digest"], item["series_digest"],
                 item["source"])
                for item in inputs
            ],
        )
    )
    blocks.append(_Block("heading", "Volumes"))
    for volume in record.get("volumes", []):
        metadata = volume.get("metadata", {})
        blocks.append(
            _Block(
                "paragraph",
                f"{volume['role']} volume of series {volume['series_instance_uid']}: digest "
                f"{volume['digest']}, size {metadata.get('size')}, spacing "
                f"{metadata.get('spacing')} mm, pixel type {metadata.get('pixel_type')}.",
            )
        )
        blocks.append(_Block("list", items=[str(item) for item in volume.get("decisions", [])]
                             or ["no decisions recorded"]))
    return blocks


def _instance_blocks(record: Mapping[str, Any]) -> list[_Block]:
    instances = record.get("instances", {})
    counts = ", ".join(f"{len(items)} {role}" for role, items in instances.items())
    rows = [
        (role, item["sop_instance_uid"], item["series_instance_uid"],
         item["transfer_syntax_uid"], item["file_sha256"], item.get("pixel_sha256") or "",
         item["location"])
        for role, items in instances.items()
        for item in items
    ]
    return [
        _Block("heading", "Instances"),
        _Block("paragraph", f"{len(rows)} instances: {counts}."),
        _Block(
            "table",
            headers=("role", "SOP Instance UID", "Series Instance UID", "transfer syntax",
                     "file_sha256", "pixel_sha256", "location"),
            rows=rows,
        ),
    ]


def _decision_blocks(record: Mapping[str, Any]) -> list[_Block]:
    blocks = [_Block("heading", "Identity link decisions")]
    links = record.get("link_decisions", [])
    if not links:
        blocks.append(_Block("paragraph", "No link decisions: the person has one record."))
    for decision in links:
        records = ", ".join(
            f"{item.get('issuer') or '(no issuer)'}:{item.get('patient_id_pseudonym', '')}"
            for item in decision.get("records", [])
        )
        blocks.append(
            _Block(
                "paragraph",
                f"{decision.get('decision', '')} ({decision.get('source', '')}, score "
                f"{decision.get('score', '')}) of records {records}. Evidence:",
            )
        )
        blocks.append(_Block("list", items=[str(item) for item in decision.get("evidence", [])]))

    blocks.append(_Block("heading", "Prior selection"))
    rows = []
    for item in record.get("selection", []):
        if isinstance(item, Mapping):
            rows.append((item.get("subject", ""), item.get("uid", ""), item.get("verdict", ""),
                         item.get("reason") or _compact(item.get("values", ""))))
        else:
            rows.append(("", "", "", str(item)))
    blocks.append(_Block("table", headers=("subject", "UID", "verdict", "reason"), rows=rows))
    return blocks


def _registration_blocks(record: Mapping[str, Any]) -> list[_Block]:
    blocks = [_Block("heading", "Registration")]
    for registration in record.get("registrations", []):
        parameters = registration.get("parameters", {})
        blocks.append(
            _Block(
                "paragraph",
                f"Verdict: {registration.get('verdict', NOT_RECORDED)}"
                + (f" ({registration['reason']})" if registration.get("reason") else "")
                + ".",
            )
        )
        rows = [(name, _compact(parameters[name])) for name in REGISTRATION_PARAMETERS
                if name in parameters]
        rows += [(f"figure: {name}", _compact(value))
                 for name, value in sorted(registration.get("metrics", {}).items())]
        rows.append(("matrix (LPS, current to prior)", _compact(registration.get("matrix_lps"))))
        blocks.append(_Block("table", headers=("parameter or figure", "value"), rows=rows))
    if len(blocks) == 1:
        blocks.append(_Block("paragraph", "No registration recorded."))
    return blocks


def _model_blocks(record: Mapping[str, Any], chain: Mapping[str, Any]) -> list[_Block]:
    blocks = [_Block("heading", "Change model")]
    for model in record.get("models", []):
        rows = [(name, _compact(model.get(name, ""))) for name in
                ("method", "reason", "bundle", "version", "weights_sha256", "device",
                 "lesion_count", "changed_voxels")]
        blocks.append(_Block("table", headers=("field", "value"), rows=rows))
    if not chain:
        blocks.append(_Block("paragraph", "The run names no registered model version."))
        return blocks

    blocks.append(_Block("heading", "Registered model and training", 3))
    rows = [
        ("registered model", f"{chain['name']} version {chain['version']}"),
        ("version weights_sha256", chain["weights_sha256"] or NOT_RECORDED),
        ("source run", f"{chain['source_run_id']} ({chain['source_run_kind']})"),
        ("training run", _training_run(chain)),
        ("data generator version", chain["generator_version"] or NOT_RECORDED),
        ("training seed", chain["seed"] or NOT_RECORDED),
    ]
    blocks.append(_Block("table", headers=("field", "value"), rows=rows))
    used = {model.get("weights_sha256") for model in record.get("models", [])} - {None, ""}
    if chain["weights_sha256"] and used and chain["weights_sha256"] not in used:
        blocks.append(
            _Block(
                "paragraph",
                f"Warning: the pair used weights {', '.join(sorted(used))}, but the registered "
                f"version has {chain['weights_sha256']}.",
            )
        )
    return blocks


def _output_blocks(record: Mapping[str, Any], index: Mapping[str, Any] | None) -> list[_Block]:
    blocks = [_Block("heading", "Outputs")]
    if index is not None:
        rows = [(item["path"], item["sha256"], item["bytes"]) for item in index["outputs"]]
        blocks.append(_Block("table", headers=("artifact", "sha256", "bytes"), rows=rows))
    else:
        rows = [(item["name"], item.get("sha256") or NOT_RECORDED, item["path"])
                for item in record.get("outputs", [])]
        blocks.append(_Block("table", headers=("output", "sha256", "path"), rows=rows))
    steps = record.get("steps", [])
    if steps:
        blocks.append(_Block("paragraph", "Wall time per step: " + ", ".join(
            f"{step['name']} {step['seconds']:.2f} s" for step in steps) + "."))
    return blocks


def _software_blocks(record: Mapping[str, Any]) -> list[_Block]:
    software = record.get("software", {})
    git = software.get("git") or {}
    commit = git.get("commit") or NOT_RECORDED
    if git.get("dirty"):
        commit += " (with uncommitted changes)"
    rows = [("priors", software.get("priors", "")), ("git commit", commit),
            ("python", software.get("python", ""))]
    rows += sorted(software.get("libraries", {}).items())
    return [_Block("heading", "Code and libraries"),
            _Block("table", headers=("package", "version"), rows=rows)]


def _training_run(chain: Mapping[str, Any]) -> str:
    if not chain["training_run_id"]:
        return NOT_RECORDED
    where = "in this MLflow store" if chain["training_run_in_store"] else (
        "not in this MLflow store; named by the bundle's training record")
    return f"{chain['training_run_id']} ({where})"


def _pair_uids(tags: Mapping[str, str], role: str) -> str:
    study = tags.get(f"priors.{role}.study_instance_uid", "")
    series = tags.get(f"priors.{role}.series_instance_uid", "")
    return f"{study} / {series}"


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, sort_keys=True)


def _utc(milliseconds: int | None) -> str:
    if milliseconds is None:
        return ""
    return dt.datetime.fromtimestamp(milliseconds / 1000, dt.UTC).isoformat(timespec="seconds")


def _to_markdown(blocks: Sequence[_Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            lines += ["#" * block.level + " " + block.text, ""]
        elif block.kind == "paragraph":
            lines += [block.text, ""]
        elif block.kind == "list":
            lines += [f"- {item}" for item in block.items] + [""]
        elif block.kind == "image":
            lines += [f"![preview of the pair]({block.text})", ""]
        elif block.kind == "table":
            lines.append("| " + " | ".join(block.headers) + " |")
            lines.append("|" + "---|" * len(block.headers))
            for row in block.rows:
                cells = [str(cell).replace("|", "\\|").replace("\n", " ") for cell in row]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _to_html(blocks: Sequence[_Block], *, title: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:2px 6px;font-size:90%;text-align:left}"
        "td{font-family:monospace}</style>",
        "</head><body>",
    ]
    for block in blocks:
        if block.kind == "heading":
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif block.kind == "paragraph":
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif block.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>"
                                          for item in block.items) + "</ul>")
        elif block.kind == "image":
            parts.append(f'<img alt="preview of the pair" src="data:image/png;base64,'
                         f'{block.text}">')
        elif block.kind == "table":
            header = "".join(f"<th>{html.escape(name)}</th>" for name in block.headers)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
                for row in block.rows
            )
            parts.append(f"<table><tr>{header}</tr>{rows}</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
