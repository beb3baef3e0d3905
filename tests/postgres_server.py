"""A throw-away PostgreSQL server for the tests, listening only on 127.0.0.1.

``PostgresServer`` runs ``initdb`` into a new folder, starts ``postgres`` on a free
loopback port with its Unix socket inside that folder, and stops it and removes the
folder at the end. PostgreSQL refuses to run as root, so when the tests run as root
(as CI does) the server binaries run as the ``postgres`` user through ``runuser``.
Authentication is ``trust`` for loopback connections only.

The cluster is initialised with the ``en_US.UTF-8`` collation when the system has it,
so a query that relies on the server's default text order sorts differently from
SQLite and the tests notice.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "find_postgres_bin", "require_postgres"]

# Debian installs each major version under its own folder; the newest one is used.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"
SUPERUSER = "priors"
# pg_ctl waits this long for the server to accept connections; a cold start on a
# loaded 2-core machine takes about 2 s.
START_TIMEOUT_SECONDS = 60
# Locales tried for the cluster, the first one installed wins. A non-C collation
# makes an unordered or text-ordered query differ from SQLite.
CLUSTER_LOCALES = ("en_US.UTF-8", "en_US.utf8", "C.UTF-8")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def find_postgres_bin() -> Path | None:
    """Return the folder of the PostgreSQL server binaries, or ``None`` when absent."""
    override = os.environ.get("PRIORS_POSTGRES_BIN")
    if override:
        candidates = [Path(override)]
    else:
        candidates = sorted(Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")),
                            key=lambda folder: _major_version(folder), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def require_postgres() -> Path:
    """Return the binaries folder; skip the test when absent, or fail under ``CI=true``."""
    folder = find_postgres_bin()
    if folder is None:
        message = (f"PostgreSQL server binaries not found in {DEBIAN_BIN_GLOB}; install "
                   "the postgresql Debian package or set PRIORS_POSTGRES_BIN")
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            message = f"running as root but there is no {SERVER_USER!r} user to run PostgreSQL"
            if _in_ci():
                pytest.fail(message)
            pytest.skip(message)
    return folder


def _major_version(bin_dir: Path) -> int:
    name = bin_dir.parent.name
    return int(name) if name.isdigit() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _installed_locale() -> str:
    listing = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False)
    installed = {name.lower().replace("-", "") for name in listing.stdout.split()}
    for name in CLUSTER_LOCALES:
        if name.lower().replace("-", "") in installed:
            return name
    return "C"


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, for one test session.

    Parameters
    ----------
    bin_dir
        Folder holding ``initdb``, ``pg_ctl`` and ``postgres``.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = 0
        self.workdir: Path | None = None
        self.locale = _installed_locale()
        self._as_root = os.geteuid() == 0

    @property
    def data_dir(self) -> Path:
        assert self.workdir is not None, "the server is not started"
        return self.workdir / "data"

    def url(self, database: str = "postgres") -> str:
        """Return the SQLAlchemy URL (psycopg 3 driver) of a database on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Initialise the cluster and start the server; raise when it does not come up."""
        # Under /tmp itself, not pytest's per-user folder (mode 700), so that the
        # postgres user can reach it.
        self.workdir = Path(tempfile.mkdtemp(prefix="priors-postgres-"))
        if self._as_root:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.workdir, account.pw_uid, account.pw_gid)
        self.port = _free_port()
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                  "--encoding=UTF8", f"--locale={self.locale}", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.workdir} -c fsync=off "
                   "-c full_page_writes=off -c synchronous_commit=off")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.workdir / "server.log"),
                  "-o", options, "-w", "-t", str(START_TIMEOUT_SECONDS), "start")

    def stop(self) -> None:
        """Stop the server immediately and delete its folder."""
        if self.workdir is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop",
                      check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        self._sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection left to it."""
        self._sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_tail(self, characters: int = 4000) -> str:
        """Return the end of the server log, for a failure message."""
        if self.workdir is None or not (self.workdir / "server.log").is_file():
            return ""
        return (self.workdir / "server.log").read_text(errors="replace")[-characters:]

    def _sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER,
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(statement)

    def _run(self, program: str, *arguments: str, check: bool = True) -> None:
        command = [str(self.bin_dir / program), *arguments]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        completed = subprocess.run(command, capture_output=True, text=True, check=False,
                                   cwd=self.workdir)
        if check and completed.returncode != 0:
            raise RuntimeError(
                f"{program} failed with exit status {completed.returncode}: "
                f"{completed.stderr.strip() or completed.stdout.strip()}\n{self.log_tail()}"
            )
