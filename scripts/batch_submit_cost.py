"""What accepting images costs the web process: one batch request of 32 images against 32 single
requests, in process (TestClient), on a fresh SQLite database in a temp dir; medians of 7 rounds.
Nothing runs the jobs: this measures submission only (validation, hashing, the job row, the
payload and the message).

usage: REDIS_URL=redis://127.0.0.1:6379/12 .venv/bin/python scripts/batch_submit_cost.py
(a Redis DB of its own: the script leaves its messages there; `redis-cli -n 12 flushdb` after)
"""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUNDS, IMAGES = 7, 32


def main() -> None:
    data_dir = tempfile.mkdtemp(prefix="onnxq-batch-")
    os.environ.update(
        DATABASE_URL=f"sqlite:///{data_dir}/onnxq.db",
        ONNXQ_DATA_DIR=data_dir,
        ONNXQ_MAX_QUEUE_DEPTH="0",
        ONNXQ_RATE_LIMIT_PER_MINUTE="0",
    )
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")
    sys.path.insert(0, str(REPO))
    from fastapi.testclient import TestClient

    from producer.keys import create_key
    from producer.web.app import create_app
    from schema import migrate
    from schema.db import session_scope
    from workers.repository import sync

    migrate.upgrade()
    with session_scope() as session:
        sync(session, REPO / "onnx")
    client = TestClient(create_app(), headers={"Authorization": f"Bearer {create_key('bench').secret}"})
    image = base64.b64encode((REPO / "samples" / "normal_2.png").read_bytes()).decode()
    model = "chest-xray-classifier-demo@1"
    batch_s, single_s = [], []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        response = client.post("/v1/jobs/inference:batch", json={"model": model, "images": [{"image": image}] * IMAGES})
        assert response.status_code == 202, response.text
        batch_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(IMAGES):
            response = client.post("/v1/jobs/inference", json={"model": model, "image": image})
            assert response.status_code == 202, response.text
        single_s.append(time.perf_counter() - started)
    batch, single = statistics.median(batch_s) * 1000, statistics.median(single_s) * 1000
    print(f"{IMAGES} images: one batch request {batch:.1f} ms, {IMAGES} single requests {single:.1f} ms")
    print(f"per image: {batch / IMAGES:.2f} ms vs {single / IMAGES:.2f} ms (single/batch = {single / batch:.2f}x)")


if __name__ == "__main__":
    main()
