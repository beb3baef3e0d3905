# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine:
# each creates the virtual environment first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench clean

venv: $(STAMP)

# torch is pinned to the CPU wheel on this machine's disk; a looser pin pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,pacs]'
	touch $(STAMP)

# The main job on the built-in synthetic cohort, with a local Ray and MLflow store.
demo: venv
	$(PY) jobs/prepare_priors.py --demo

# The whole test suite, slow cases included. As root, it first installs the Debian
# packages the tests start: dicom3tools, Orthanc with its DICOMweb plugin, dcmtk and
# PostgreSQL. Services are started by the tests themselves, on 127.0.0.1.
test: venv
	@missing=""; \
	for pair in /usr/bin/dciodvfy:dicom3tools /usr/sbin/Orthanc:orthanc \
		/usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb \
		/usr/bin/findscu:dcmtk; do \
		[ -e $${pair%%:*} ] || missing="$$missing $${pair#*:}"; \
	done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
		service orthanc stop >/dev/null 2>&1 || true; \
	fi
	$(PY) -m pytest -ra

# Everything but the cases marked slow.
test-fast: venv
	$(PY) -m pytest -ra -m "not slow"

# Every script in benchmarks/, one after the other; each prints its own figures and
# docs/benchmarks.md records them. dcm2niix is compared only when it is on PATH.
bench: venv
	@for script in benchmarks/*.py; do \
		echo "== $$script"; \
		$(PY) $$script || exit 1; \
	done

lint: venv
	$(VENV)/bin/ruff check priors jobs tests
	$(VENV)/bin/mypy priors

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
