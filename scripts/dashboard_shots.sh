#!/bin/sh
# Screenshots of each dashboard page (docs/dashboard/*.png), taken by the dashboard's browser
# test against a real gateway (headless Chromium; needs Mosquitto and chromium installed).
set -eu
cd "$(dirname "$0")/.."
EDGEMART_DASHBOARD_SHOTS="$PWD/docs/dashboard" exec .venv/bin/python -m pytest -q \
  tests/gateway/test_dashboard_pages.py tests/gateway/test_dashboard_sale_pages.py "$@"
