#!/usr/bin/env bash
# The whole test suite on a fresh machine: Mosquitto, PostgreSQL's server binaries, NATS,
# chromium and systemd-analyze (apt-get --no-install-recommends when missing), a virtual
# environment with the dev extras, then lint (ruff), types (mypy --strict), the generated
# protocol reference check, and pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mosquitto
fi

# The gateway's PostgreSQL backend is tested against a private server (initdb into a
# temporary directory, simulators/postgres.py): the server binaries, not a running service.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v postgres >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql
fi

# The broker-cluster tier runs three private NATS nodes (MQTT + JetStream), and a subscribe
# refusal is tested on one.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nats-server
fi

# The dashboard test drives Debian's chromium (Playwright with executable_path; no browser
# download).
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
fi

# The agent's systemd unit is checked with `systemd-analyze verify` (tests/e2e/test_deploy.py).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends systemd
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== protocol reference"
.venv/bin/python -m protocol.docs --check
echo "== pytest"
# Two workers (pytest-xdist): most integration tests wait on brokers, databases and
# processes, so two share the 2 cores well; the files that put mDNS packets on the LAN run on
# one worker, one after another (`xdist_group`, tests/conftest.py). TEST_WORKERS=0: one process.
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-2}" --dist loadgroup "$@"
