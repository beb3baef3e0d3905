"""``priors convert``: DICOM series to NIfTI with sidecars, through ``priors.cli.main``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from priors.cli import main

pytestmark = pytest.mark.shared_data

SIEMENS = Path("conversion/siemens/anatomical/001")
GROUND_TRUTH = Path("conversion/siemens/anatomical/001_ground_truth.nii.gz")
OTHER_SERIES = Path("conversion/ge/anatomical/001")

# The NIfTI header stores spacing and origin as float32.
SPACING_TOLERANCE_MM = 0.01
ORIGIN_TOLERANCE_MM = 0.01


def _convert(sources: list[Path], out: Path) -> int:
    return main(["convert", *map(str, sources), "--out", str(out)])


def _sidecars(out: Path) -> list[dict]:
    names = {"rejected.json", "conversion.json"}
    return [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(out.glob("*.json"))
        if path.name not in names
    ]


def test_convert_matches_ground_truth(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _convert([shared_data / SIEMENS], out) == 0

    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == 1
    ours = sitk.DICOMOrient(sitk.ReadImage(str(written[0])), "LPS")
    truth = sitk.DICOMOrient(sitk.ReadImage(str(shared_data / GROUND_TRUTH)), "LPS")

    # dicom2nifti stacks the slices in the opposite order, so both are oriented to LPS
    # before the voxel comparison.
    assert ours.GetSize() == truth.GetSize()
    assert np.allclose(ours.GetSpacing(), truth.GetSpacing(), atol=SPACING_TOLERANCE_MM)
    assert np.allclose(ours.GetOrigin(), truth.GetOrigin(), atol=ORIGIN_TOLERANCE_MM)
    assert np.allclose(ours.GetDirection(), truth.GetDirection(), atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(truth))


def test_convert_sidecar_and_name(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _convert([shared_data / SIEMENS], out) == 0

    (sidecar,) = _sidecars(out)
    written = next(out.glob("*.nii.gz"))
    image = sitk.ReadImage(str(written))
    assert sidecar["nifti"] == written.name
    assert written.name.startswith("4_")
    assert "dicom2nifti" not in written.name
    assert sidecar["instance_count"] == 4
    assert sidecar["size"] == [256, 256, 4]
    assert np.allclose(sidecar["origin_lps"], image.GetOrigin(), atol=1e-3)
    assert np.allclose(sidecar["direction_lps"], image.GetDirection(), atol=1e-6)
    assert sidecar["series_instance_uid"].startswith("1.2.826.0.1.3680043.8.498.")
    assert isinstance(sidecar["decisions"], list)
    assert sidecar["metadata"]["modality"] == "MR"
    assert len(sidecar["pixel_sha256"]) == 4


def test_convert_records_broken_files(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    shutil.copytree(shared_data / SIEMENS, source)
    other = sorted((shared_data / OTHER_SERIES).iterdir())[0].read_bytes()
    # Half a file of another series: the header reads, the pixel data is cut short.
    (source / "half.dcm").write_bytes(other[: len(other) // 2])
    # The first 300 bytes: preamble and file meta only, no Series Instance UID.
    (source / "head.dcm").write_bytes(other[:300])
    (source / "notes.txt").write_text("not DICOM\n", encoding="utf-8")
    out = tmp_path / "out"

    assert _convert([source], out) == 0

    assert len(list(out.glob("*.nii.gz"))) == 1
    rejected = json.loads((out / "rejected.json").read_text(encoding="utf-8"))
    assert [Path(r["path"]).name for r in rejected["files"]] == ["head.dcm"]
    assert "Series Instance UID" in rejected["files"][0]["reason"]
    (series,) = rejected["series"]
    assert [Path(p).name for p in series["paths"]] == ["half.dcm"]
    assert series["reason"]
    counts = json.loads((out / "conversion.json").read_text(encoding="utf-8"))["counts"]
    assert counts == {
        "files_found": 7,
        "used": 4,
        "rejected": 2,
        "skipped_not_dicom": 1,
        "skipped_other": 0,
        "dropped_by_decision": 0,
    }
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("series ") for line in lines) == 2


def test_convert_splits_series_into_volumes(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "table-moved/In/Ph/1301_Dual-echo_iso"
    out = tmp_path / "out"
    assert _convert([source], out) == 0

    sidecars = _sidecars(out)
    assert len(sidecars) == 4
    assert len({s["stack_label"] for s in sidecars}) == 4
    assert all(s["instance_count"] == 30 for s in sidecars)
    assert len({s["nifti"] for s in sidecars}) == 4


def test_convert_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent"
    assert _convert([missing], tmp_path / "out") == 2
    assert str(missing) in capsys.readouterr().err


def test_convert_policy_choices_match_volume_module():
    from priors import cli
    from priors.dicom import volume

    assert set(cli.CONVERT_GAP_POLICIES) == set(volume.GAP_POLICIES)
    assert set(cli.CONVERT_TILT_POLICIES) == set(volume.TILT_POLICIES)
    assert set(cli.CONVERT_TEMPORAL_POLICIES) == set(volume.TEMPORAL_POLICIES)


def test_dicomdir_file_converts_its_file_set(tmp_path: Path) -> None:
    from priors.commands import convert_command
    from priors.synthetic import write_cohort

    cohort = write_cohort(tmp_path / "cohort", seed=1, n_patients=1, n_timepoints=2,
                          matrix=32, n_slices=6)

    status = convert_command([str(cohort.media_dir / "DICOMDIR")], out_dir=tmp_path / "out")

    assert status == 0
    assert list((tmp_path / "out").rglob("*.nii.gz"))
