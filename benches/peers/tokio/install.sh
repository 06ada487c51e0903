#!/usr/bin/env bash
# Builds the tokio-tungstenite peer (crates from crates.io; its own workspace and target dir).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet
