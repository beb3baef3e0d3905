"""The shared parts of PACS sources: queries, the retrieval cache, configured names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from priors.config import ConfigError, load_settings
from priors.sources.pacs import (
    SourceSpecError,
    is_remote_spec,
    open_remote_source,
    open_sources,
)
from priors.sources.remote import RetrievalCache, StudyQuery, validate_date_range


@pytest.mark.parametrize("value", ["20210115", "20200101-20211231", "-20210115", "20210115-"])
def test_date_ranges_accepted(value: str) -> None:
    assert validate_date_range(value) == value
    assert StudyQuery(study_date=value).study_date == value


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("2021-01-15", "expected YYYYMMDD"),
        ("-", "expected YYYYMMDD"),
        ("20211231-20200101", "starts after it ends"),
        ("2021011", "expected YYYYMMDD"),
        ("20181301", "20181301 is not a calendar date"),
        ("-20180230", "20180230 is not a calendar date"),
    ],
)
def test_bad_date_ranges_refused(value: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        StudyQuery(study_date=value)


def test_cache_stores_once_by_content(tmp_path: Path) -> None:
    cache = RetrievalCache(tmp_path)
    first = cache.store("dicomweb:a@http://127.0.0.1:1/dw", "loc/1", b"same bytes")
    second = cache.store("dimse:b@PACS@127.0.0.1:2", "loc/2", b"same bytes")

    assert first.path == second.path
    assert first.path.name == hashlib.sha256(b"same bytes").hexdigest() + ".dcm"
    assert len(list((tmp_path / "objects").rglob("*.dcm"))) == 1
    assert [item.location for item in cache.iter_files("dicomweb:a@http://127.0.0.1:1/dw")] \
        == ["loc/1"]


def test_cache_keeps_the_latest_object_per_location(tmp_path: Path) -> None:
    cache = RetrievalCache(tmp_path)
    source = "dicomweb:a@http://127.0.0.1:1/dw"
    cache.store(source, "loc/1", b"first")
    cache.store(source, "loc/1", b"second")

    files = list(cache.iter_files(source))
    assert len(files) == 1
    assert files[0].path.read_bytes() == b"second"


def test_cache_manifest_grows_only_on_change(tmp_path: Path) -> None:
    source = "dicomweb:a@http://127.0.0.1:1/dw"
    for _ in range(3):
        RetrievalCache(tmp_path).store(source, "loc/1", b"same")
    cache = RetrievalCache(tmp_path)
    cache.store(source, "loc/1", b"same")
    cache.store(source, "loc/1", b"changed")
    manifest = next((tmp_path / "sources").rglob("retrieved.jsonl"))

    assert len(manifest.read_text().splitlines()) == 2


def test_cache_passes_over_a_cut_manifest_line(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cache = RetrievalCache(tmp_path)
    source = "dimse:b@PACS@127.0.0.1:2"
    cache.store(source, "loc/1", b"kept")
    manifest = next((tmp_path / "sources").rglob("retrieved.jsonl"))
    with open(manifest, "a", encoding="utf-8") as stream:
        stream.write('{"location": "loc/2", "obj')

    assert [item.location for item in cache.iter_files(source)] == ["loc/1"]
    assert "unreadable manifest entry" in caplog.text


def test_cache_of_an_unknown_source_is_empty(tmp_path: Path) -> None:
    assert list(RetrievalCache(tmp_path).iter_files("dicomweb:none@http://x")) == []


def test_existing_path_wins_over_a_configured_name(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site_a").mkdir()
    configured = {"site_a": {"kind": "dicomweb", "url": "http://127.0.0.1:9/dw",
                             "institution": "a"}}
    assert not is_remote_spec("site_a", configured)
    assert is_remote_spec("site_b", {"site_b": {}})
    assert is_remote_spec("dicomweb:http://127.0.0.1:9/dw", {})
    assert is_remote_spec("dimse:PACS@127.0.0.1:4242", {})
    assert not is_remote_spec("missing-folder", configured)


def test_unknown_source_names_the_configured_ones(tmp_path: Path) -> None:
    configured = {"site_a": {"kind": "dicomweb"}}
    with pytest.raises(FileNotFoundError, match=r"no PACS has that name \(configured: site_a\)"):
        open_sources([str(tmp_path / "nowhere")], configured=configured, issuers={})
    with pytest.raises(SourceSpecError, match="configured: site_a"):
        open_remote_source("site_b", configured)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"kind": "hl7"}, "kind 'hl7' is not one of dicomweb, dimse"),
        ({"kind": "dicomweb", "institution": "a"}, "missing url"),
        ({"kind": "dicomweb", "url": "http://127.0.0.1:9", "institution": "a", "colour": 1},
         "unknown keys colour"),
        ({"kind": "dicomweb", "url": "http://127.0.0.1:9", "institution": "a",
          "token_env": "PRIORS_TEST_UNSET_TOKEN"},
         "token_env names the environment variable PRIORS_TEST_UNSET_TOKEN, which is not set"),
        ({"kind": "dicomweb", "url": "http://127.0.0.1:9", "institution": "a",
          "password_env": "SECRET_VAR"}, "password_env is set but username is not"),
        ({"kind": "dimse", "host": "127.0.0.1", "port": 4242, "institution": "b"},
         "missing called_ae"),
    ],
)
def test_bad_configured_sources(table: dict, words: str) -> None:
    with pytest.raises(SourceSpecError, match=words):
        open_remote_source("site", {"site": table}, environ={"SECRET_VAR": "x"})


@pytest.mark.parametrize("spec", ["dimse:PACS", "dimse:@127.0.0.1:4242", "dimse:PACS@host:port"])
def test_bad_adhoc_dimse_specs(spec: str) -> None:
    with pytest.raises(SourceSpecError, match=r"expected dimse:<called AE>@<host>:<port>"):
        open_remote_source(spec, {})


def test_sources_read_from_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "priors.toml"
    config.write_text(
        f'home = "{tmp_path}"\n'
        "[sources.site_a]\n"
        'kind = "dicomweb"\n'
        'url = "http://127.0.0.1:9/dicom-web"\n'
        'institution = "site-a"\n'
        'issuer = "SITE-A"\n'
    )
    settings = load_settings(config, environ={})
    assert settings.sources["site_a"]["issuer"] == "SITE-A"
    with pytest.raises(ConfigError, match="'sources' has invalid value"):
        load_settings(None, environ={"PRIORS_SOURCES": "site_a"})


def test_patient_id_kept_out_of_retry_logs(caplog: pytest.LogCaptureFixture) -> None:
    from orthanc_server import free_port

    from priors.sources.dicomweb import DicomwebSource
    from priors.sources.remote import SourceConnectionError

    source = DicomwebSource(f"http://127.0.0.1:{free_port()}/dicom-web", institution="down",
                            retries=1, backoff_s=0.01, timeout_s=2.0,
                            cache=RetrievalCache(Path("/nonexistent-cache")))
    caplog.set_level("DEBUG")
    # The command line's logging set-up, run by earlier tests, raises urllib3's level.
    caplog.set_level("DEBUG", logger="urllib3")
    with pytest.raises(SourceConnectionError, match="connection refused") as caught:
        source.find_studies(StudyQuery(patient_id="PID-NOT-FOR-LOGS"))

    assert "Retrying" in caplog.text
    assert "PID-NOT-FOR-LOGS" not in caplog.text
    assert "PID-NOT-FOR-LOGS" not in str(caught.value)


def test_pacs_source_opens_offline_without_its_secret(tmp_path: Path) -> None:
    configured = {"site": {"kind": "dicomweb", "url": "http://127.0.0.1:9/dw",
                           "institution": "a", "username": "u", "password_env": "UNSET_PW"}}

    sources = open_sources(["site"], configured=configured, issuers={},
                           cache=RetrievalCache(tmp_path))

    assert list(sources[0].iter_files()) == []
    with pytest.raises(SourceSpecError, match="UNSET_PW, which is not set"):
        open_remote_source("site", configured, environ={})


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("dimse:PACS@127.0.0.1:99999", "port 99999: expected 1 to 65535"),
        ("dimse:WAYTOOLONGAETITLE12345@127.0.0.1:4242", "called AE title"),
        ("dicomweb:ftp://127.0.0.1/x", "DICOMweb URL"),
        ("dicomweb:http://user:pw@127.0.0.1:9/x", "takes no credentials"),
    ],
)
def test_bad_adhoc_specs_are_usage_errors(spec: str, words: str) -> None:
    with pytest.raises(SourceSpecError, match=words):
        open_remote_source(spec, {})


def test_institution_with_separators_refused() -> None:
    configured = {"site": {"kind": "dimse", "host": "127.0.0.1", "port": 4242,
                           "called_ae": "PACS", "institution": "a/../b@c"}}
    with pytest.raises(SourceSpecError, match="institution 'a/../b@c' is invalid"):
        open_remote_source("site", configured)


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["fetch", "dicomweb:http://127.0.0.1:9/dw"], "or --all to fetch every study"),
        (["fetch", "dicomweb:http://127.0.0.1:9/dw", "--series-uid", "1.2.3"],
         "--series-uid needs --study-uid"),
        (["fetch", "dicomweb:http://127.0.0.1:9/dw", "--all", "--workers", "0"],
         "--workers: 0 is not a positive whole number"),
        (["find", "dimse:PACS@127.0.0.1:99999"], "port 99999: expected 1 to 65535"),
    ],
)
def test_fetch_usage_errors(arguments: list[str], words: str, priors_home: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from priors.cli import main

    try:
        status = main(arguments)
    except SystemExit as exit_:
        status = exit_.code
        message = str(exit_.code) if isinstance(exit_.code, str) else ""
    else:
        message = ""
    message += capsys.readouterr().err
    assert status not in (0, None)
    assert words in message
