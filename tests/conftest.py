"""Shared fixtures: the real test data folder and isolated priors home folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return the folder of real DICOM test data, skipping (or failing in CI) when absent."""
    path = Path(os.environ.get("PRIORS_TEST_DATA", DEFAULT_SHARED_DATA))
    if not (path / "README.md").is_file():
        message = f"real DICOM test data not found at {path}; set PRIORS_TEST_DATA"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def priors_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point PRIORS_HOME at a fresh folder and keep MLflow out of the user's store."""
    home = tmp_path / "priors-home"
    home.mkdir()
    monkeypatch.setenv("PRIORS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PRIORS_CONFIG", raising=False)
    monkeypatch.setenv("PRIORS_PSEUDONYM_KEY", "test-key-not-secret")
    return home


@pytest.fixture(scope="session")
def ray_session():
    """Start one local Ray for the whole test session (about 3 s and 0.5 GiB)."""
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def postgres_server():
    """Start one PostgreSQL server on 127.0.0.1 for the session (skip when not installed)."""
    from postgres_server import PostgresServer, require_postgres

    server = PostgresServer(require_postgres())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path):
    """Return the URL of an empty catalog database: an SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    import secrets

    name = f"catalog_{secrets.token_hex(6)}"
    yield server.create_database(name)
    server.drop_database(name)
