#!/usr/bin/env bash
# Kiln vs ONNX Runtime, in one command, on a fresh machine with Go, Node.js
# (>= 18) and npm (and LLVM 19 for kiln's compiled backend: make install-deps):
#
#   bash bench/peers/run.sh [flags of bench/peers/main.go]
#
# installs onnxruntime-node from npm (the version pinned in package-lock.json,
# --ignore-scripts: the CPU shared library ships inside the package), builds
# bin/kiln and the harness, then for inception_v4, inception_resnet_v2 and
# inception_resnet_v1 exports each with `kiln export --onnx`, checks ORT's
# output against Kiln's interpreter and compiled code, and times Kiln and ORT
# alternately for batch {1, 8} x threads {1, 2}, printing a ratio table.
# Examples: run.sh -nets inception_v4 -batches 1     (a quicker run)
#           run.sh -bench=false                      (agreement only)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
command -v node >/dev/null || { echo "run.sh: node not found (install Node.js >= 18 and npm)" >&2; exit 1; }
if [ ! -f bench/peers/node_modules/onnxruntime-node/package.json ]; then
  (cd bench/peers && npm ci --ignore-scripts --no-audit --no-fund)
fi
mkdir -p bin
make -s build # bin/kiln and bin/kiln-runner, which kiln build appends networks to
go build -o bin/peers ./bench/peers
exec bin/peers -kiln bin/kiln -peers bench/peers -work bench/peers/work "$@"
