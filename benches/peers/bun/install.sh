#!/usr/bin/env bash
# Installs Bun and the peer's packages from npm (idempotent). The `bun` npm package fetches its
# binary from GitHub in a postinstall script; `@oven/bun-linux-x64` ships it inside the npm
# tarball, so the registry alone is enough.
set -euo pipefail
cd "$(dirname "$0")"
[ -x node_modules/@oven/bun-linux-x64/bin/bun ] || npm install --silent --no-audit --no-fund >/dev/null
