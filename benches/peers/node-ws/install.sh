#!/usr/bin/env bash
# Installs the Node `ws` peer's packages from npm (idempotent).
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules/ws ] || npm install --silent --no-audit --no-fund >/dev/null
