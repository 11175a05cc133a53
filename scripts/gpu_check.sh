#!/usr/bin/env bash
# The CUDA checks, in one short run on a GPU host (e.g. the lent H200 machine):
#   1. install the `gpu` extra (onnxruntime-gpu only, never both wheels),
#   2. show the providers a session really runs on (session.get_providers(), not the available list),
#   3. session.run throughput per batch size (the bench's ceiling sweep) and the whole bench.
# Results go to $OUT (default /tmp/gpu-check). Carry onnx/resnet18-bench (built here with
# `make bench-model`, 45 MB) to include the ResNet-18-class model.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
JOBS="${JOBS:-2000}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true
make install ORT=gpu > "$OUT/install.log" 2>&1
.venv/bin/pip list 2>/dev/null | grep -i onnxruntime | tee "$OUT/runtimes.txt"
.venv/bin/python - <<'PY' 2>&1 | tee "$OUT/providers.txt"
import logging
from pathlib import Path

import onnxruntime as ort

from workers.modelconfig import load_config
from workers.sessions import load_session

logging.basicConfig(level="INFO")
print("onnxruntime", ort.__version__, "available:", ort.get_available_providers())
for version_dir in sorted(Path("onnx").glob("*/*")):
    if (version_dir / "model.onnx").exists():
        loaded = load_session(version_dir / "model.onnx", load_config(version_dir / "model.toml"), ref=str(version_dir))
        print(version_dir, "session providers:", loaded.session.get_providers(), "buckets:", loaded.buckets)
PY
for model in chest-xray-classifier-demo resnet18-bench; do
    [ -f "onnx/$model/1/model.onnx" ] || continue
    .venv/bin/onnxq bench --model "$model" --jobs "$JOBS" --json > "$OUT/bench-$model.json" 2> "$OUT/bench-$model.log" \
        || echo "bench $model failed: see $OUT/bench-$model.log"
done
ls -la "$OUT"
