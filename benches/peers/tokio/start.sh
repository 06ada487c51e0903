#!/usr/bin/env bash
# Starts the tokio-tungstenite peer on $PORT (the process replaces this shell).
cd "$(dirname "$0")"
exec target/release/beacon-peer-tokio
