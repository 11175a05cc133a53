#!/usr/bin/env bash
# Benchmark onnxq on a ResNet-18-class model: builds onnx/resnet18-bench/1/ (random weights,
# gitignored; `make bench-model`, which installs torch into .venv-train) if it is missing, then
# runs `onnxq bench` against it.
#   scripts/bench_resnet18.sh [--jobs N] [--json]        (default --jobs 200)
# REDIS_URL: a Redis to use (default: an embedded one in the bench's temporary data dir).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f onnx/resnet18-bench/1/model.onnx ]; then
    make bench-model
fi
ONNXQ="${ONNXQ:-.venv/bin/onnxq}"
case " $* " in
    *" --jobs "*) exec "$ONNXQ" bench --model resnet18-bench "$@" ;;
    *) exec "$ONNXQ" bench --model resnet18-bench --jobs 200 "$@" ;;
esac
