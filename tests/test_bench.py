"""`onnxq bench` end to end with a tiny job count: the report has every key, every number is
positive. Timings and ratios are never asserted on (DESIGN.md: tests never assert on wall-clock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STAGE_KEYS = ("jobs_per_s", "p50_ms", "p95_ms", "p99_ms", "mean_batch_size")


def test_bench_reports_all_three_stages_and_ratios() -> None:
    # A subprocess: the bench binds the broker to its own Redis namespace on first import, which
    # this test process may already have done for other tests. It makes its own SQLite file.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ONNXQ_DATA_DIR")}
    completed = subprocess.run(
        [sys.executable, "-m", "onnxq", "bench", "--model", "chest-xray-classifier-demo", "--jobs", "24", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-3000:]
    report = json.loads(completed.stdout)

    assert report["model"] == "chest-xray-classifier-demo@1"
    assert report["jobs"] == 24
    assert report["best_batch_size"] >= 1
    assert report["ceiling"]["jobs_per_s"] > 0
    assert report["ceiling"]["mean_batch_size"] == report["best_batch_size"]
    for stage in ("naive", "pipeline"):
        for key in STAGE_KEYS:
            assert report[stage][key] > 0, (stage, key)
        assert report[stage]["succeeded"] == 24
        assert report[stage]["failed"] == 0
        assert report[stage]["drain"]["jobs_per_s"] > 0
        assert report[stage]["drain"]["mean_batch_size"] >= 1
    assert report["naive"]["mean_batch_size"] == 1
    for key in ("pipeline_vs_ceiling", "pipeline_vs_naive", "drain_pipeline_vs_ceiling", "drain_pipeline_vs_naive"):
        assert report["ratios"][key] > 0
    assert report["machine"]["cpu_count"] >= 1
    assert report["machine"]["onnxruntime_provider"]
    assert report["machine"]["database"] == "sqlite"
