#!/usr/bin/env bash
# Set up, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The gallery test drives a real headless Chromium (Debian's package); install it where we can.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing Debian's chromium for the gallery test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "test: could not install chromium; the gallery test will say it is skipped" >&2
fi
source scripts/env.sh
# Two workers (pytest-xdist), each with half the cores: the suite waits on subprocesses, servers and
# imports for much of its time, and a second worker uses those gaps. DIRECT2V_TEST_WORKERS=0: one process.
exec .venv/bin/python -m pytest -n "${DIRECT2V_TEST_WORKERS:-2}" --dist loadfile "$@"
