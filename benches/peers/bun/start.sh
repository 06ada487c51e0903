#!/usr/bin/env bash
# Starts the Bun peer on $PORT (the process replaces this shell, so $! is the server).
cd "$(dirname "$0")"
exec node_modules/@oven/bun-linux-x64/bin/bun server.js
