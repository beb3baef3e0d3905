"""Open the sources a command names: paths on disk or PACS from the configuration.

A PACS is configured once, under a name, in the ``[sources.<name>]`` table of the
TOML configuration::

    [sources.site_a]
    kind = "dicomweb"
    url = "https://pacs.site-a.example/dicom-web"
    institution = "site-a"
    issuer = "SITE-A"              # Issuer of Patient ID for instances with none
    username = "priors"
    password_env = "SITE_A_PASSWORD"   # or token_env = "SITE_A_TOKEN"

    [sources.site_b]
    kind = "dimse"
    host = "10.1.2.3"
    port = 104
    called_ae = "SITEBPACS"
    calling_ae = "PRIORS"
    institution = "site-b"
    method = "move"                # or "get"
    move_destination = "PRIORS"
    storage_port = 11112
    storage_host = "10.1.2.50"     # this machine's address on the PACS's network

Secrets are never written in the file: ``password_env`` and ``token_env`` name the
environment variables that hold them. A command then names the source by its name,
or ad hoc as ``dicomweb:<url>`` or ``dimse:<called AE>@<host>:<port>``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from priors.config import ConfigError
from priors.sources.remote import RemoteSource, RetrievalCache

__all__ = [
    "REMOTE_KINDS",
    "SourceSpecError",
    "is_remote_spec",
    "open_remote_source",
    "open_sources",
]

logger = logging.getLogger(__name__)

REMOTE_KINDS = ("dicomweb", "dimse")
# Keys of a [sources.<name>] table that each kind accepts, besides "kind".
_DICOMWEB_KEYS = frozenset({"url", "institution", "issuer", "username", "password_env",
                            "token_env", "timeout_s", "retries", "backoff_s"})
_DIMSE_KEYS = frozenset({"host", "port", "called_ae", "calling_ae", "institution", "issuer",
                         "method", "move_destination", "storage_port", "storage_host",
                         "timeout_s"})
# An institution name goes into source ids between separators ("@", ":", "/"), so it
# may hold only letters, digits, dots, hyphens and underscores.
INSTITUTION_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


class SourceSpecError(ConfigError):
    """A source named on the command line or in the configuration that cannot be used.

    A ``ConfigError``, so the command line reports it as a usage error without
    importing this module (and pydicom with it) at start-up.
    """


def is_remote_spec(spec: str, configured: Mapping[str, Mapping[str, Any]]) -> bool:
    """Tell whether a source argument names a PACS rather than a path.

    A path that exists wins over a configured name, so a folder is never shadowed.
    """
    if Path(spec).exists():
        return False
    return spec in configured or spec.startswith(tuple(f"{kind}:" for kind in REMOTE_KINDS))


def open_remote_source(
    spec: str,
    configured: Mapping[str, Mapping[str, Any]],
    *,
    cache: RetrievalCache | None = None,
    environ: Mapping[str, str] | None = None,
    offline: bool = False,
) -> RemoteSource:
    """Open a PACS by configured name or by an ad hoc ``dicomweb:``/``dimse:`` spec.

    Parameters
    ----------
    spec
        A name under ``[sources]``, ``dicomweb:<url>`` or
        ``dimse:<called AE>@<host>:<port>``.
    configured
        The ``sources`` tables of the settings.
    cache
        Retrieval cache; the default under the priors home folder when ``None``.
    environ
        Environment holding the secrets named by ``password_env`` and ``token_env``;
        ``os.environ`` by default.
    offline
        Open the source only to list what it has retrieved already: a secret whose
        variable is unset is then not an error, since nothing is sent to the PACS.

    Raises
    ------
    SourceSpecError
        When the name is unknown, the kind is not supported, a key is unknown or
        missing, or a named environment variable is unset.
    """
    env = os.environ if environ is None else environ
    if spec in configured:
        table = dict(configured[spec])
        origin = f"[sources.{spec}]"
    elif spec.startswith("dicomweb:"):
        url = spec.removeprefix("dicomweb:")
        if "@" in url.partition("//")[2].partition("/")[0]:
            raise SourceSpecError(
                "an ad hoc dicomweb: source takes no credentials in its URL; configure "
                "the PACS under [sources.<name>] with password_env or token_env")
        table = {"kind": "dicomweb", "url": url, "institution": "adhoc"}
        origin = spec
    elif spec.startswith("dimse:"):
        table = _parse_dimse_spec(spec)
        origin = spec
    else:
        known = ", ".join(sorted(configured)) or "none configured"
        raise SourceSpecError(
            f"source {spec!r}: no such file or folder, and no PACS of that name "
            f"(configured: {known}); an ad hoc PACS is dicomweb:<url> or "
            "dimse:<AE>@<host>:<port>"
        )
    kind = table.pop("kind", "")
    if kind not in REMOTE_KINDS:
        raise SourceSpecError(
            f"{origin}: kind {kind!r} is not one of {', '.join(REMOTE_KINDS)}")
    institution = str(table.get("institution", ""))
    if institution and not INSTITUTION_PATTERN.match(institution):
        raise SourceSpecError(f"{origin}: institution {institution!r} is invalid; use "
                              "letters, digits, '.', '-' and '_' only")
    try:
        if kind == "dicomweb":
            return _open_dicomweb(table, origin=origin, env=env, cache=cache,
                                  offline=offline)
        return _open_dimse(table, origin=origin, cache=cache)
    except (TypeError, ValueError) as err:
        # Constructors check URLs, ports, AE titles and methods with ValueError.
        raise SourceSpecError(f"{origin}: {err}") from err


def open_sources(
    specs: Sequence[str | os.PathLike[str]],
    *,
    configured: Mapping[str, Mapping[str, Any]],
    issuers: Mapping[str, str],
    cache: RetrievalCache | None = None,
    offline: bool = True,
) -> list[Any]:
    """Open every source a command names, paths and PACS alike.

    Parameters
    ----------
    specs
        Folders, ZIP files, DICOMDIR media folders, configured PACS names or ad hoc
        PACS specs.
    configured
        The ``sources`` tables of the settings.
    issuers
        Issuer of Patient ID per resolved path, for path sources without one.
    cache
        Retrieval cache of the PACS sources.
    offline
        Open PACS sources only to list what they retrieved already (see
        ``open_remote_source``). True by default, because ingest and the main job read
        the cache and send nothing to the PACS.

    Raises
    ------
    FileNotFoundError
        When a path does not exist and names no PACS either.
    SourceSpecError
        When a PACS cannot be opened as configured.
    """
    from priors.sources import open_source

    sources: list[Any] = []
    for spec in specs:
        text = os.fspath(spec)
        if is_remote_spec(text, configured):
            sources.append(open_remote_source(text, configured, cache=cache,
                                              offline=offline))
            continue
        path = Path(text)
        if not path.exists():
            known = ", ".join(sorted(configured)) or "none configured"
            raise FileNotFoundError(
                f"source {text} does not exist, and no PACS has that name "
                f"(configured: {known})"
            )
        resolved = path.resolve()
        sources.append(open_source(resolved, issuer=issuers.get(str(resolved), "")))
    return sources


def _parse_dimse_spec(spec: str) -> dict[str, Any]:
    body = spec.removeprefix("dimse:")
    called_ae, at, endpoint = body.partition("@")
    host, colon, port = endpoint.rpartition(":")
    if not at or not colon or not called_ae or not host or not port.isdigit():
        raise SourceSpecError(
            f"{spec!r}: expected dimse:<called AE>@<host>:<port>, for example "
            "dimse:PACS@127.0.0.1:4242"
        )
    return {"kind": "dimse", "called_ae": called_ae, "host": host, "port": int(port),
            "institution": "adhoc"}


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], *, origin: str,
                required: Sequence[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SourceSpecError(f"{origin}: unknown keys {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(allowed))}")
    missing = [key for key in required if not table.get(key)]
    if missing:
        raise SourceSpecError(f"{origin}: missing {', '.join(missing)}")


def _secret(table: Mapping[str, Any], key: str, *, origin: str,
            env: Mapping[str, str], offline: bool) -> str:
    variable = table.get(key, "")
    if not variable:
        return ""
    value = env.get(variable, "")
    if not value and not offline:
        raise SourceSpecError(f"{origin}: {key} names the environment variable "
                              f"{variable}, which is not set")
    return value


def _open_dicomweb(table: dict[str, Any], *, origin: str, env: Mapping[str, str],
                   cache: RetrievalCache | None, offline: bool) -> RemoteSource:
    _check_keys(table, _DICOMWEB_KEYS, origin=origin, required=("url", "institution"))
    if table.get("password_env") and table.get("token_env"):
        raise SourceSpecError(f"{origin}: set password_env or token_env, not both")
    if table.get("password_env") and not table.get("username"):
        raise SourceSpecError(f"{origin}: password_env is set but username is not")
    password = _secret(table, "password_env", origin=origin, env=env, offline=offline)
    token = _secret(table, "token_env", origin=origin, env=env, offline=offline)
    try:
        from priors.sources.dicomweb import DicomwebSource
    except ImportError as err:
        raise SourceSpecError(f"{origin}: DICOMweb needs {err.name}, which is not "
                              "installed; install priors with its pacs extra "
                              "(pip install 'priors[pacs]')") from err

    return DicomwebSource(
        str(table["url"]),
        institution=str(table["institution"]),
        issuer=str(table.get("issuer", "")),
        username=str(table.get("username", "")),
        password=password,
        token=token,
        timeout_s=float(table.get("timeout_s", 30.0)),
        retries=int(table.get("retries", 3)),
        backoff_s=float(table.get("backoff_s", 0.5)),
        cache=cache,
    )


def _open_dimse(table: dict[str, Any], *, origin: str,
                cache: RetrievalCache | None) -> RemoteSource:
    _check_keys(table, _DIMSE_KEYS, origin=origin,
                required=("host", "port", "called_ae", "institution"))
    try:
        from priors.sources.dimse import DimseSource
    except ImportError as err:
        raise SourceSpecError(f"{origin}: DIMSE needs {err.name}, which is not "
                              "installed; install priors with its pacs extra "
                              "(pip install 'priors[pacs]')") from err

    return DimseSource(
        str(table["host"]),
        int(table["port"]),
        called_ae=str(table["called_ae"]),
        institution=str(table["institution"]),
        calling_ae=str(table.get("calling_ae", "PRIORS")),
        issuer=str(table.get("issuer", "")),
        method=str(table.get("method", "get")),
        move_destination=str(table.get("move_destination", "")),
        storage_port=int(table.get("storage_port", 0)),
        storage_host=str(table.get("storage_host", "127.0.0.1")),
        timeout_s=float(table.get("timeout_s", 30.0)),
        cache=cache,
    )
