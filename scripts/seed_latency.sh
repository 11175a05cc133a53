#!/bin/bash
# Latency of sparse synchronous requests (one every 1.5 s, so the worker is idle each time):
# starts `onnxq up` in a temp data dir with ONNXQ_WORKER_IDLE_POLL_MS=$1 on port $2, sends 10
# seed-compatible requests, prints the medians of the server-side total_ms and the client wall time.
# usage: scripts/seed_latency.sh IDLE_POLL_MS PORT     (e.g. 1000 8771, then 100 8772)
set -e
cd "$(dirname "$0")/.."
D=$(mktemp -d)
env -u REDIS_URL -u DATABASE_URL ONNXQ_DATA_DIR=$D ONNXQ_WORKER_METRICS_PORT=0 ONNXQ_WORKER_IDLE_POLL_MS=$1 PORT=$2 .venv/bin/onnxq up > $D/up.log 2>&1 &
UP=$!
for i in $(seq 90); do curl -s localhost:$2/health >/dev/null 2>&1 && break; sleep 1; done
KEY=$(env -u REDIS_URL -u DATABASE_URL ONNXQ_DATA_DIR=$D .venv/bin/onnxq keys create lat 2>/dev/null)
BODY="{\"model_name\": \"chest-xray-classifier-demo\", \"image\": \"data:image/png;base64,$(base64 -w0 samples/pneumonia_1.png)\"}"
for i in $(seq 10); do
  sleep 1.5
  curl -s -o $D/out.json -w "%{time_total}\n" -X POST localhost:$2/api/pytorch/inference -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" -d "$BODY" > $D/wall.txt
  echo "$(python3 -c "import json; print(json.load(open('$D/out.json'))['performance']['total_ms'])") $(cat $D/wall.txt)"
done | python3 -c "
import sys, statistics
rows=[l.split() for l in sys.stdin if l.strip()]
t=[float(a) for a,b in rows]; w=[float(b)*1000 for a,b in rows]
print(f'idle_poll_ms=$1 n={len(t)} median total_ms={statistics.median(t):.0f} median client wall ms={statistics.median(w):.0f}')"
kill -TERM $UP; wait $UP 2>/dev/null || true
rm -rf $D
