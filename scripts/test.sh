#!/usr/bin/env bash
# Installs what the tests need (Debian packages, Python tools in a venv) and runs every test.
# Usage: scripts/test.sh            (the README's test command; CI runs exactly this)
set -euo pipefail
cd "$(dirname "$0")/.."

# vendor/glommio must be the pinned upstream crate plus vendor/glommio-patches (BEACON.md there).
scripts/glommio-vendor.sh check

need_apt=()
for pkg in nginx redis-server redis-tools nats-server prometheus chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ] && [ -n "${BEACON_TEST_APT:-1}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 || echo "warning: could not install ${need_apt[*]}"
fi

# Node tooling for the browser and AsyncAPI tests (tests/browser/package.json, pinned by its
# lock file); reinstalled only when the lock file changes.
if ! command -v npm >/dev/null 2>&1 && [ -n "${BEACON_TEST_APT:-1}" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null 2>&1 || echo "warning: could not install nodejs npm"
fi
if command -v npm >/dev/null 2>&1 && ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.beacon-lock; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.beacon-lock)
fi

# Python tools (RFC 6455 conformance runner) live in a project-local venv.
if [ ! -x .venv/bin/kosoku ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check kosoku==0.1.0
fi
export PATH="$PWD/.venv/bin:$PATH"

# The example Django backend (examples/django) that tests/django_backend.rs runs as a real
# server: its own venv, reinstalled only when its pinned requirements change.
if ! cmp -s examples/django/requirements.txt examples/django/.venv/.beacon-requirements; then
  rm -rf examples/django/.venv
  python3 -m venv examples/django/.venv
  examples/django/.venv/bin/pip install -q --disable-pip-version-check -r examples/django/requirements.txt
  cp examples/django/requirements.txt examples/django/.venv/.beacon-requirements
fi
(cd examples/django && PYTHONDONTWRITEBYTECODE=1 .venv/bin/python manage.py test -v 0)

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace

# Fuzz targets (fuzz/README.md): each runs briefly from the committed corpus; a crash fails.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
fuzz/run-ci.sh

# Benchmarks in smoke mode so none rots: each criterion bench once (debug build, as tests), then
# short load runs of the scenarios against Beacon (debug binaries, loopback only). Full runs: BENCHMARKS.md.
cargo test --bench hotpath --bench geo
for scenario in echo broadcast storm busyroom; do
  benches/run.sh "$scenario" --smoke
done
