"""``priors timeline`` on the two spine CDs, run in-process through ``priors.cli.main``.

The patient's identifiers are read from the files at test time and never written here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from priors.cli import main

pytestmark = pytest.mark.shared_data

# One file of each CD, read for the identifiers that must not appear in any output.
IDENTIFIER_FILES = (
    "spine-cd-a/DICOM/04600/P0000001/S0000006/MR000001",
    "spine-cd-b/DCMDT/D0000000",
)
# Name components shorter than this may occur inside UIDs or words by chance.
MIN_COMPONENT_LENGTH = 3


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Share one isolated PRIORS_HOME, so the CDs are ingested once for the module."""
    folder = tmp_path_factory.mktemp("timeline-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRIORS_HOME", str(folder))
        patch.delenv("PRIORS_CONFIG", raising=False)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("PRIORS_PSEUDONYM_KEY", "test-key-not-secret")
        yield folder


@pytest.fixture(scope="module")
def cds(shared_data: Path) -> list[str]:
    return [str(shared_data / "spine-cd-a"), str(shared_data / "spine-cd-b")]


@pytest.fixture(scope="module")
def identifiers(shared_data: Path) -> list[str]:
    """Return the Patient IDs, name groups and components, and birth dates on the CDs."""
    values: set[str] = set()
    for name in IDENTIFIER_FILES:
        ds = pydicom.dcmread(shared_data / name, stop_before_pixels=True)
        values.add(str(ds.PatientID))
        values.add(str(ds.PatientBirthDate))
        for group in str(ds.PatientName).split("="):
            values.add(group)
            values.update(part for part in group.replace(" ", "^").split("^"))
    return sorted(v for v in values if len(v) >= MIN_COMPONENT_LENGTH)


def _run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    assert main(["timeline", *args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out), out


def test_json_merged_history(
    home: Path, cds: list[str], identifiers: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    document, text = _run_json(cds, capsys)
    assert len(document["persons"]) == 1
    person = document["persons"][0]
    assert person["id"].startswith("P-")

    assert len(person["records"]) == 2
    for record in person["records"]:
        assert set(record) >= {"issuer", "patient_id_pseudonym", "source"}
        assert record["issuer"]
        assert record["patient_id_pseudonym"]
        assert record["source"]
    assert len({r["patient_id_pseudonym"] for r in person["records"]}) == 2

    assert len(person["links"]) == 1
    link = person["links"][0]
    assert sorted(link["records"]) == [0, 1]
    assert link["decision"] == "link"
    assert link["evidence"] and isinstance(link["score"], float)

    studies = person["studies"]
    assert [s["date"] for s in studies] == ["2018-01-07", "2018-01-13"]
    for study in studies:
        assert set(study) >= {
            "date", "modality", "description", "study_instance_uids", "locations", "series",
        }  # fmt: skip
        assert study["modality"] == "MR"
        assert study["locations"] and study["series"]
    assert len(studies[0]["study_instance_uids"]) == 2
    assert len(set(studies[0]["study_instance_uids"])) == 2
    assert len(studies[1]["study_instance_uids"]) == 1
    assert not set(studies[0]["study_instance_uids"]) & set(studies[1]["study_instance_uids"])

    by_numbers = {
        (p["current"]["series_number"], p["prior"]["series_number"]): p for p in person["pairs"]
    }
    assert (4001, 6) in by_numbers
    assert (5001, 7) in by_numbers
    for pair in person["pairs"]:
        assert pair["reasons"]
        assert pair["current"]["study_date"] == "2018-01-13"
        assert pair["prior"]["study_date"] == "2018-01-07"
        for side in ("current", "prior"):
            assert set(pair[side]) >= {"study_date", "series_instance_uid", "series_description"}
    assert "T2" in by_numbers[(4001, 6)]["prior"]["series_description"]
    assert "T1" in by_numbers[(5001, 7)]["prior"]["series_description"]

    for value in identifiers:
        assert value not in text, "an identifying value of the CDs appears in the JSON"


def test_person_filter(home: Path, cds: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    document, _ = _run_json(cds, capsys)
    pseudonym = document["persons"][0]["id"]
    again, _ = _run_json([*cds, "--person", pseudonym], capsys)
    assert [p["id"] for p in again["persons"]] == [pseudonym]

    assert main(["timeline", *cds, "--person", "P-0000000000000000"]) != 0
    captured = capsys.readouterr()
    assert "no person with pseudonym" in captured.err
    assert "P-0000000000000000" in captured.err
    assert captured.out == ""


def test_table_and_explain(
    home: Path, cds: list[str], identifiers: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["timeline", *cds, "--explain"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("date"))
    assert header.split() == [
        "date", "site", "modality", "body", "part", "description", "series", "duplicates",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("2018-")}
    assert set(rows) == {"2018-01-07", "2018-01-13"}
    # The re-imported study lists 5 series and one duplicate UID set.
    assert rows["2018-01-07"].split()[-2:] == ["5", "1"]
    assert rows["2018-01-13"].split()[-2:] == ["4", "0"]
    assert "MR" in rows["2018-01-07"]
    assert "LSPINE" in rows["2018-01-07"]

    rejection = next(line for line in out.splitlines() if "series 3001" in line)
    assert "rejected" in rejection
    assert "locator" in rejection
    chosen = [
        line
        for line in out.splitlines()
        if "chosen" in line and "current series 4001 with prior series 6" in line
    ]
    assert len(chosen) == 1
    assert "T2" in chosen[0]
    for value in identifiers:
        assert value not in out


def test_chart_written(
    home: Path, cds: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "timeline.png"
    document, _ = _run_json([*cds, "--chart", str(chart)], capsys)
    assert document["persons"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart.stat().st_size > 1000


def test_missing_cross_reference_file(
    home: Path, cds: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.csv"
    assert main(["timeline", *cds, "--cross-reference", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_prepare_passes_cross_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import priors.distributed

    seen: dict[str, object] = {}

    class Report:
        ok = True

        def render_text(self) -> str:
            return "stub report"

        def to_dict(self) -> dict:
            return {}

    def fake_job(sources, **options):
        seen.update(options, sources=sources)
        return Report()

    monkeypatch.setenv("PRIORS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PRIORS_CONFIG", raising=False)
    monkeypatch.setattr(priors.distributed, "run_prepare_job", fake_job)
    table = tmp_path / "pix.csv"
    table.write_text("issuer_a,id_a,issuer_b,id_b\n", encoding="utf-8")
    assert main(["prepare", str(tmp_path), "--no-ray", "--cross-reference", str(table)]) == 0
    assert seen["cross_reference"] == str(table)
    assert "stub report" in capsys.readouterr().out
