"""The code and library versions that a provenance record names.

Versions are read from installed package metadata, so no library is imported
just to learn its version.
"""

from __future__ import annotations

import functools
import logging
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import priors

__all__ = ["LIBRARY_DISTRIBUTIONS", "code_version", "git_commit", "library_versions"]

logger = logging.getLogger(__name__)

# Distribution names (as pip knows them) of the libraries whose behaviour shapes
# a result: DICOM decoding, resampling, the model and its runtime, tracking.
LIBRARY_DISTRIBUTIONS = (
    "highdicom",
    "mlflow",
    "monai",
    "numpy",
    "pydicom",
    "ray",
    "SimpleITK",
    "torch",
)

# A hanging git (a network file system, a lock) must not hold up a job.
GIT_TIMEOUT_S = 5.0


def library_versions() -> dict[str, str | None]:
    """Return the installed version of each library in ``LIBRARY_DISTRIBUTIONS``.

    A library that is not installed maps to ``None``.
    """
    versions: dict[str, str | None] = {}
    for name in LIBRARY_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.cache
def git_commit() -> dict[str, Any] | None:
    """Return the commit and dirty flag of the git work tree that holds priors.

    Returns
    -------
    dict or None
        ``{"commit": <40 hex>, "dirty": bool}``, or ``None`` when priors is not
        running from a git work tree or git is unavailable.
    """
    root = Path(priors.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = _run_git(root, "rev-parse", "HEAD")
        status = _run_git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError) as err:
        logger.info("git commit of %s not recorded: %s", root, err)
        return None
    return {"commit": commit, "dirty": bool(status)}


def _run_git(root: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=GIT_TIMEOUT_S,
    )
    return completed.stdout.strip()


def code_version() -> dict[str, Any]:
    """Return priors' version, its git commit when known, Python and the libraries."""
    return {
        "priors": priors.__version__,
        "git": git_commit(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
