#!/usr/bin/env bash
# Take the console screenshots again (docs/console/*.png): the browser test saves them as it
# clicks through the console (needs chromium and the dev extra installed in .venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
NPCFORGE_SCREENSHOTS="$PWD/docs/console" .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/integration/test_console_browser.py
ls -l docs/console/*.png
