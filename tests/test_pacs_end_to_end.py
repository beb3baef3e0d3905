"""Two hospitals' PACS and a CD, as a user reaches them: ``priors fetch``, then ``prepare``.

Each site of the synthetic cohort gets its own real Orthanc: the first is reached
over DICOMweb with basic authentication, the others over DIMSE C-MOVE into the
storage SCP that ``priors`` starts. The CD stays a folder. The instances fetched must
be the ones a folder ingest of the same files finds (same SOP Instance UIDs and
``pixel_sha256``), and the main job must pair studies across the three sources.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from orthanc_server import DicomPeer, OrthancServer, free_port, require_orthanc

from priors.catalog import Catalog
from priors.sources import open_source
from priors.synthetic import write_cohort

pytestmark = pytest.mark.slow

DICOMWEB_USER = "priors-e2e"
# A test-only secret, handed to priors through the environment as a user would.
DICOMWEB_PASSWORD = "e2e-password-not-secret"
PASSWORD_VARIABLE = "PRIORS_E2E_SITE_A_PASSWORD"
CALLING_AE = "PRIORSE2E"
# The whole job runs in a subprocess, the model included, on the small cohort.
COMMAND_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory):
    """Start one Orthanc per site folder, load it, and write the priors configuration."""
    require_orthanc()
    root = tmp_path_factory.mktemp("pacs-e2e")
    cohort = write_cohort(root / "cohort", seed=3, n_patients=2, n_timepoints=3, matrix=64,
                          coverage_mm=120.0)
    site_names = sorted(cohort.site_dirs)
    assert len(site_names) >= 2, site_names
    storage_port = free_port()
    servers: dict[str, OrthancServer] = {}
    try:
        for index, name in enumerate(site_names):
            server = OrthancServer(
                root / f"orthanc-{name}", name=f"e2e-{name}", ae_title=f"E2EPACS{index}",
                peers=[DicomPeer(CALLING_AE, storage_port)],
                username=DICOMWEB_USER if index == 0 else "",
                password=DICOMWEB_PASSWORD if index == 0 else "",
            ).start()
            servers[name] = server
            files = sorted(path for path in cohort.site_dirs[name].rglob("*") if path.is_file())
            assert len(server.upload(files)) == len(files)
        config = root / "priors.toml"
        lines = [f'home = "{root / "home"}"']
        for index, name in enumerate(site_names):
            server = servers[name]
            if index == 0:
                lines += [f"[sources.{name}]", 'kind = "dicomweb"',
                          f'url = "{server.dicomweb_url}"', f'institution = "{name}"',
                          f'username = "{DICOMWEB_USER}"',
                          f'password_env = "{PASSWORD_VARIABLE}"']
            else:
                lines += [f"[sources.{name}]", 'kind = "dimse"', 'host = "127.0.0.1"',
                          f"port = {server.dicom_port}", f'called_ae = "{server.ae_title}"',
                          f'calling_ae = "{CALLING_AE}"', f'institution = "{name}"',
                          'method = "move"', f'move_destination = "{CALLING_AE}"',
                          f"storage_port = {storage_port}"]
        config.write_text("\n".join(lines) + "\n")
        yield root, cohort, servers, config
    finally:
        for server in servers.values():
            server.stop()


def _priors(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PRIORS_CONFIG=str(config), PRIORS_PSEUDONYM_KEY="e2e-test-key")
    env[PASSWORD_VARIABLE] = DICOMWEB_PASSWORD
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "priors.cli", *args], env=env,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


@pytest.fixture(scope="module")
def fetched(sites):
    """Fetch every study of every site, with open-ended date ranges both ways."""
    root, cohort, servers, config = sites
    results = {}
    for index, name in enumerate(sorted(servers)):
        date_range = "19000101-" if index % 2 == 0 else "-29991231"
        completed = _priors(config, "fetch", name, "--study-date", date_range, "--json")
        assert completed.returncode == 0, completed.stderr[-3000:]
        results[name] = json.loads(completed.stdout)
    return results


def test_fetch_receives_every_instance(sites, fetched) -> None:
    _, _, servers, _ = sites
    for name, result in fetched.items():
        received = sum(len(item["files"]) for item in result["retrieved"])
        assert received == servers[name].instance_count(), name
        assert result["failed"] == []
        assert result["ingest"]["indexed"] == received


def test_fetch_keeps_the_password_out_of_output(fetched) -> None:
    assert DICOMWEB_PASSWORD not in json.dumps(fetched)


def test_fetched_instances_match_a_folder_ingest(sites, fetched, tmp_path: Path) -> None:
    root, cohort, servers, _ = sites
    folder_catalog = Catalog(f"sqlite:///{tmp_path / 'folders.db'}")
    folder_catalog.ingest([open_source(cohort.site_dirs[name]) for name in servers],
                          workers=1)
    by_folder = {(row.sop_instance_uid, row.pixel_sha256)
                 for row in folder_catalog.instances_of_sources(
                     [open_source(cohort.site_dirs[name]).source_id for name in servers])}
    pacs_catalog = Catalog(f"sqlite:///{root / 'home' / 'catalog.db'}")
    source_ids = [result["source"]["source_id"] for result in fetched.values()]
    by_pacs = {(row.sop_instance_uid, row.pixel_sha256)
               for row in pacs_catalog.instances_of_sources(source_ids)}
    assert by_pacs == by_folder


def test_prepare_pairs_across_pacs_and_cd(sites, fetched) -> None:
    root, cohort, servers, config = sites
    report_path = root / "report.json"
    completed = _priors(config, "prepare", *sorted(servers), str(cohort.media_dir),
                        "--out", str(root / "packages"), "--no-ray",
                        "--report", str(report_path))
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(report_path.read_text())
    truth = json.loads(cohort.ground_truth.read_text())
    assert report["counts_add_up"]
    assert len(report["persons"]) == len(truth["persons"])
    assert {row["status"] for row in report["pairs"]} == {"finished"}
    assert {row["person"] for row in report["pairs"]} == {
        person["person"] for person in report["persons"]}
