"""The job report: what a job found, used, skipped and rejected, and each pair's fate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["JobReport"]

# Rejected files listed one by one in the text report; the JSON lists every file.
MAX_LISTED_FILES = 40
OUTCOMES = ("used", "indexed", "skipped", "rejected")


@dataclass
class JobReport:
    """Counts, pairs and locations of one job; rendered as text and as JSON."""

    job_id: str
    counts: dict[str, int] = field(default_factory=dict)
    file_reasons: list[dict[str, str]] = field(default_factory=list)
    absent_references: list[dict[str, str]] = field(default_factory=list)
    persons: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = ""
    parent_run_id: str = ""
    registered_model: dict[str, Any] = field(default_factory=dict)
    out_dir: str = ""

    @property
    def ok(self) -> bool:
        """True when every file is accounted for and no pair failed."""
        return self.counts_add_up and not any(pair["status"] == "failed" for pair in self.pairs)

    @property
    def counts_add_up(self) -> bool:
        """True when files found = used + indexed + skipped + rejected."""
        return self.counts.get("found", 0) == sum(self.counts.get(name, 0) for name in OUTCOMES)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready values."""
        return {
            "job_id": self.job_id,
            "counts": dict(self.counts),
            "counts_add_up": self.counts_add_up,
            "files": list(self.file_reasons),
            "absent_references": list(self.absent_references),
            "persons": list(self.persons),
            "pairs": list(self.pairs),
            "warnings": list(self.warnings),
            "timings": dict(self.timings),
            "mlflow": {
                "tracking_uri": self.mlflow_tracking_uri,
                "experiment": self.mlflow_experiment,
                "parent_run_id": self.parent_run_id,
                "registered_model": self.registered_model,
            },
            "out_dir": self.out_dir,
        }

    def render_text(self) -> str:
        """Return the report as a few readable lines for the terminal."""
        counts = self.counts
        lines = [
            f"job {self.job_id}",
            "files: {found} found = {used} used + {indexed} indexed + {skipped} skipped + "
            "{rejected} rejected; {absent} DICOMDIR references absent".format(
                **{name: counts.get(name, 0)
                   for name in ("found", *OUTCOMES, "absent")}),
        ]
        if not self.counts_add_up:
            lines.append("WARNING: the outcome counts do not add up to the files found")
        rejected = [item for item in self.file_reasons if item.get("outcome") == "rejected"]
        for item in rejected[:MAX_LISTED_FILES]:
            lines.append(f"  rejected: {item['location']}: {item['reason']}")
        if len(rejected) > MAX_LISTED_FILES:
            lines.append(f"  ... and {len(rejected) - MAX_LISTED_FILES} more rejected files "
                         "in the JSON report")
        skipped: dict[str, int] = {}
        for item in self.file_reasons:
            if item.get("outcome") == "skipped":
                skipped[item["reason"]] = skipped.get(item["reason"], 0) + 1
        for reason, count in sorted(skipped.items(), key=lambda entry: -entry[1]):
            lines.append(f"  skipped {count} files: {reason}")
        if self.absent_references:
            lines.append(f"  {len(self.absent_references)} DICOMDIR records name files "
                         "that are not on the media (counted as absent)")
        lines.append(f"persons: {len(self.persons)}")
        by_status: dict[str, int] = {}
        for pair in self.pairs:
            by_status[pair["status"]] = by_status.get(pair["status"], 0) + 1
        summary = ", ".join(f"{count} {status}" for status, count in sorted(by_status.items()))
        lines.append(f"pairs: {len(self.pairs)} ({summary or 'none'})")
        for pair in self.pairs:
            lines.append(
                f"  {pair['person']} {pair['current_date']} {pair['current_series']} <- "
                f"{pair['prior_date']} {pair['prior_series']}: {pair['status']}"
                + (f" [{pair['method']}]" if pair.get("method") else "")
                + (f" ({pair['reason']})" if pair.get("reason") else ""))
        lines.extend(f"warning: {text}" for text in self.warnings)
        if self.timings:
            lines.append("time: " + ", ".join(
                f"{name} {seconds:.1f} s" for name, seconds in self.timings.items()))
        if self.out_dir:
            lines.append(f"context packages: {self.out_dir}")
        if self.mlflow_tracking_uri:
            lines.append(f"MLflow: experiment {self.mlflow_experiment!r}, job run "
                         f"{self.parent_run_id}")
            lines.append(f"  open with: mlflow ui --backend-store-uri {self.mlflow_tracking_uri}")
        return "\n".join(lines)
