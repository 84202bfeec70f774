#!/usr/bin/env bash
# Every figure of benchmarks/README.md's engine section, one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY benchmarks/engine.py rounds --clients 100 --rounds 10
$PY benchmarks/engine.py rounds --clients 1000 --rounds 3 --dataset-size 200000
$PY benchmarks/engine.py kl --clients 1000
$PY benchmarks/engine.py hfldd --clients 100 --rounds 4
$PY benchmarks/engine.py flower --clients 100 --rounds 100 --skip-sequential
$PY benchmarks/engine.py flower --clients 1000 --rounds 3 --dataset-size 200000 --skip-sequential
$PY benchmarks/engine.py summary
