"""``priors register``: exit status, output files and recovered transforms, through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from priors.cli import main
from priors.config import RegistrationSettings
from priors.register_command import InputError, run_register, with_command_options
from priors.registration import preset, read_transform

TABLE_MOVED = Path("table-moved/In/Ph")
OUTPUTS = ("transform.tfm", "registered_prior.nii.gz", "overlay.png", "report.json")

# The table-moved phantom moved with the table, so the true transform is the identity.
TABLE_MOVED_TOLERANCE_MM = 1.0

# A prior that is an exact shifted copy of the current should be recovered far more
# closely than a voxel (2 mm here).
SHIFT_TOLERANCE_MM = 0.5
ROTATION_TOLERANCE = 5e-3

# Known shift of the synthetic prior, LPS mm: current point p is prior point p + SHIFT.
SHIFT_MM = np.array([6.0, -4.0, 9.0])


def _register(current: Path, prior: Path, out: Path, *extra: str) -> int:
    return main(["register", str(current), str(prior), "--out", str(out), *extra])


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _echo1_magnitude(series_folder: Path, target: Path) -> Path:
    """Copy the echo-1 magnitude images of a Philips dual-echo series into ``target``."""
    target.mkdir(parents=True)
    for path in sorted(series_folder.iterdir()):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        # (0008,0008) Image Type value 4 is M (magnitude) or P (phase) on these files.
        if str(dataset.EchoNumbers) == "1" and dataset.ImageType[3] == "M":
            shutil.copy(path, target / path.name)
    return target


def _ct_phantom() -> np.ndarray:
    """Return an asymmetric CT-like phantom (HU) as a (z, y, x) array of 40 x 56 x 56."""
    z, y, x = np.mgrid[0:40, 0:56, 0:56].astype(np.float32)
    volume = np.full(z.shape, -1000.0, dtype=np.float32)
    body = ((x - 28) / 22) ** 2 + ((y - 28) / 17) ** 2 + ((z - 20) / 17) ** 2 <= 1
    volume[body] = 40.0
    volume[((x - 36) / 5) ** 2 + ((y - 24) / 4) ** 2 + ((z - 14) / 6) ** 2 <= 1] = 800.0
    volume[((x - 20) / 6) ** 2 + ((y - 33) / 4) ** 2 + ((z - 26) / 4) ** 2 <= 1] = -700.0
    volume[body & (x < 14) & (z > 24)] = -100.0
    smoothed = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(volume), 1.0)
    return sitk.GetArrayFromImage(smoothed)


def _write_nifti(array: np.ndarray, origin: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin(tuple(float(v) for v in origin))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def table_moved_pair(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("table-moved")
    current = _echo1_magnitude(shared_data / TABLE_MOVED / "1301_Dual-echo_iso", root / "cur")
    prior = _echo1_magnitude(
        shared_data / TABLE_MOVED / "2201_Dual-echo_FH-60_table_moved", root / "pri"
    )
    return current, prior


@pytest.mark.shared_data
def test_register_table_moved(table_moved_pair: tuple, tmp_path: Path) -> None:
    current, prior = table_moved_pair
    assert len(list(current.iterdir())) == 30
    assert len(list(prior.iterdir())) == 30
    out = tmp_path / "out"

    assert _register(current, prior, out) == 0

    for name in OUTPUTS:
        assert (out / name).is_file(), name
    report = _report(out)
    assert report["verdict"] == "pass"
    assert report["modality_pair"] == "MR-MR"
    assert report["modality_pair_source"] == "the DICOM headers"
    assert np.abs(report["translation_mm"]).max() < TABLE_MOVED_TOLERANCE_MM
    assert np.allclose(np.asarray(report["matrix_lps"])[:3, 3], report["translation_mm"])
    assert "ncc_in_overlap" in report["metrics"]
    assert report["seed"] == report["parameters"]["seed"]
    assert report["threads"] >= 1
    assert {"SimpleITK", "numpy", "priors"} <= set(report["versions"])
    assert len(report["candidates"]) >= 2
    assert report["current"]["instance_count"] == 30

    registered = sitk.ReadImage(str(out / "registered_prior.nii.gz"))
    assert registered.GetSize() == (96, 96, 30)


def test_register_recovers_known_shift(tmp_path: Path) -> None:
    array = _ct_phantom()
    origin = np.array([-56.0, -56.0, -40.0])
    current = _write_nifti(array, origin, tmp_path / "current.nii.gz")
    prior = _write_nifti(array, origin + SHIFT_MM, tmp_path / "prior.nii.gz")
    out = tmp_path / "out"

    assert _register(current, prior, out) == 0

    report = _report(out)
    matrix = np.asarray(report["matrix_lps"])
    assert report["modality_pair"] == "CT-CT"
    assert report["modality_pair_source"].startswith("the default")
    assert np.allclose(matrix[:3, 3], SHIFT_MM, atol=SHIFT_TOLERANCE_MM)
    assert np.allclose(matrix[:3, :3], np.eye(3), atol=ROTATION_TOLERANCE)
    assert np.array_equal(matrix[3], [0.0, 0.0, 0.0, 1.0])

    transform = read_transform(out / "transform.tfm")
    assert transform.GetName() == "AffineTransform"
    point = np.array([10.0, -20.0, 5.0])
    mapped = np.asarray(transform.TransformPoint(tuple(point)))
    assert np.allclose(mapped, point + SHIFT_MM, atol=SHIFT_TOLERANCE_MM)


def test_register_failed_checks_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    array = _ct_phantom()
    origin = np.array([-56.0, -56.0, -40.0])
    # A prior of the same body outline filled with noise: it overlaps, but its NCC
    # with the current is near zero, below the CT-CT minimum.
    noise = np.random.default_rng(7).normal(0.0, 400.0, array.shape).astype(np.float32)
    prior_array = np.where(array > -500.0, noise, -1000.0)
    current = _write_nifti(array, origin, tmp_path / "current.nii.gz")
    prior = _write_nifti(prior_array, origin, tmp_path / "prior.nii.gz")
    out = tmp_path / "out"

    assert _register(current, prior, out) == 3

    assert "failed its quality checks" in capsys.readouterr().err
    report = _report(out)
    assert report["verdict"] == "fail"
    assert report["reason"]
    for name in OUTPUTS:
        assert (out / name).is_file(), name


def test_register_missing_path_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    current = _write_nifti(_ct_phantom(), np.zeros(3), tmp_path / "current.nii.gz")
    missing = tmp_path / "no-such-prior"

    assert _register(current, missing, tmp_path / "out") == 2

    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_register_bad_modality_pair_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = _write_nifti(_ct_phantom(), np.zeros(3), tmp_path / "current.nii.gz")

    assert _register(current, current, tmp_path / "out", "--modality-pair", "PT-CT") == 2

    assert "--modality-pair" in capsys.readouterr().err


@pytest.mark.shared_data
def test_register_single_dicom_file_exit_2(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    single = sorted((shared_data / "conversion/siemens/anatomical/001").iterdir())[0]

    assert _register(single, single, tmp_path / "out") == 2

    assert "single DICOM file" in capsys.readouterr().err


def test_register_bspline_stage_writes_h5(tmp_path: Path) -> None:
    array = _ct_phantom()
    origin = np.array([-56.0, -56.0, -40.0])
    current = _write_nifti(array, origin, tmp_path / "current.nii.gz")
    prior = _write_nifti(array, origin + SHIFT_MM, tmp_path / "prior.nii.gz")
    out = tmp_path / "out"

    code = _register(
        current, prior, out, "--stages", "rigid,bspline", "--seed", "11", "--threads", "1"
    )

    report = _report(out)
    assert code == 0, report["reason"]
    assert report["stages"] == ["rigid", "bspline"]
    assert report["files"]["transform"] == "transform.h5"
    assert not (out / "transform.tfm").exists()
    jacobian = report["jacobian_determinant"]
    assert jacobian["folding_fraction"] == 0.0
    assert 0.5 < jacobian["min"] <= jacobian["max"] < 1.5
    assert report["seed"] == 11
    assert report["threads"] == 1
    # The composite maps a point as the rigid part does, to within the B-spline's
    # correction of an exact shifted copy (a fraction of a voxel).
    transform = read_transform(out / "transform.h5")
    point = np.array([10.0, -20.0, 5.0])
    mapped = np.asarray(transform.TransformPoint(tuple(point)))
    assert np.allclose(mapped, point + SHIFT_MM, atol=1.0)


def test_register_inverse_consistency_reported(tmp_path: Path) -> None:
    array = _ct_phantom()
    origin = np.array([-56.0, -56.0, -40.0])
    current = _write_nifti(array, origin, tmp_path / "current.nii.gz")
    prior = _write_nifti(array, origin + SHIFT_MM, tmp_path / "prior.nii.gz")
    out = tmp_path / "out"

    assert _register(current, prior, out, "--inverse-consistency", "--metric", "mattes") == 0

    report = _report(out)
    assert report["parameters"]["metric"] == "mattes"
    assert report["parameters"]["inverse_consistency"] is True
    # The verdict's limit; Mattes on this 2 mm phantom measured 0.52 mm.
    assert report["inverse_consistency_mm"]["p95"] <= 1.0
    assert report["metrics"]["reverse_verdict"] == "pass"


@pytest.mark.parametrize("stages", ["affine", "rigid,warp", ""])
def test_register_bad_stages_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stages: str
) -> None:
    current = _write_nifti(_ct_phantom(), np.zeros(3), tmp_path / "current.nii.gz")

    assert _register(current, current, tmp_path / "out", "--stages", stages) == 2

    assert f"--stages {stages!r} is invalid" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_register_correlation_for_ct_mr_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = _write_nifti(_ct_phantom(), np.zeros(3), tmp_path / "current.nii.gz")

    code = _register(
        current, current, tmp_path / "out", "--modality-pair", "CT-MR", "--metric", "correlation"
    )

    assert code == 2
    assert "does not suit a CT-MR pair" in capsys.readouterr().err


def _random_volume(path: Path, shape: tuple[int, int, int]) -> Path:
    values = np.random.default_rng(0).normal(0.0, 1.0, shape).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    return path


def test_truncated_nifti_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = _random_volume(tmp_path / "whole.nii.gz", (20, 32, 32))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole.read_bytes()[:2000])
    plain = _random_volume(tmp_path / "plain.nii", (20, 32, 32))
    cut_plain = tmp_path / "cut.nii"
    cut_plain.write_bytes(plain.read_bytes()[:5000])

    for broken in (cut, cut_plain):
        status = run_register(broken, whole, out_dir=tmp_path / "out",
                              settings=RegistrationSettings())
        assert status == 2
        assert "truncated" in capsys.readouterr().err


def test_thin_volume_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    thin = _random_volume(tmp_path / "thin.nii.gz", (2, 32, 32))
    whole = _random_volume(tmp_path / "whole.nii.gz", (20, 32, 32))

    status = run_register(thin, whole, out_dir=tmp_path / "out", settings=RegistrationSettings())

    assert status == 2
    assert "too thin to register" in capsys.readouterr().err


def test_out_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = _random_volume(tmp_path / "whole.nii.gz", (20, 32, 32))
    taken = tmp_path / "taken"
    taken.write_text("x")

    status = run_register(whole, whole, out_dir=taken, settings=RegistrationSettings())

    assert status == 2
    assert "exists and is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("seed", [0, -5, 2**32])
def test_seed_outside_itk_range_refused(seed: int) -> None:
    with pytest.raises(InputError, match=f"--seed is {seed}, expected 1 to 4294967295"):
        with_command_options(RegistrationSettings(), seed=seed)
    with pytest.raises(ValueError, match=f"seed {seed} is invalid"):
        preset("CT-CT", RegistrationSettings(seed=seed))


def test_cross_modality_order_kept_for_nifti() -> None:
    from priors.register_command import _resolve_modalities

    assert _resolve_modalities("MR-CT", "", "")[1:3] == ("MR", "CT")
    assert _resolve_modalities("CT-MR", "", "")[1:3] == ("CT", "MR")
