#!/bin/sh
# run.sh installs what lmxbench needs (redis-server, live-mutex 0.2.25),
# runs the full matrix 3 times (the table reports medians) and writes it to
# bench/results.md. Extra arguments go to lmxbench.
set -eu
cd "$(dirname "$0")"
if ! command -v redis-server >/dev/null 2>&1; then
	if command -v apt-get >/dev/null 2>&1; then
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
	else
		echo "run.sh: redis-server missing and no apt-get: the Redis rows will say unavailable" >&2
	fi
fi
if [ ! -f node_modules/live-mutex/package.json ]; then
	if command -v npm >/dev/null 2>&1; then
		npm install --ignore-scripts --no-audit --no-fund --no-save live-mutex@0.2.25
	else
		echo "run.sh: npm missing: the live-mutex rows will say unavailable" >&2
	fi
fi
echo "## machine"
echo "nproc: $(nproc)"
echo "go: $(go version)"
echo "node: $(node --version 2>/dev/null || echo none)"
echo "redis-server: $(redis-server --version 2>/dev/null || echo none)"
echo "kernel: $(uname -sr)"
echo
go build -o lmxbench .
trap 'rm -f lmxbench' EXIT
./lmxbench -runs 3 -o results.md "$@"
