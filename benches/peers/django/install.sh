#!/usr/bin/env bash
# Installs the Django Channels peer into a venv from PyPI (idempotent).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/daphne ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
