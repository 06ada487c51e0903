#!/usr/bin/env bash
# Starts the Node `ws` peer on $PORT (the process replaces this shell, so $! is the server).
cd "$(dirname "$0")"
exec node server.js
