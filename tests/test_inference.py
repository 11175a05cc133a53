"""The model runner alone: a failing batch is retried item by item, and only the bad item fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxq import payloads
from onnxq.images import image_limits
from onnxq.settings import get_settings
from producer.client import get_job, submit_inference
from schema.tables import utcnow
from tests.helpers import DEMO, audit_rows
from workers.inference import Prepared
from workers.preprocess import preprocess
from workers.runtime import Runtime


def test_one_bad_tensor_fails_only_its_own_job(migrated: str, samples: list[Path]) -> None:
    # Given three queued jobs (no worker runs) and a runner for the demo model
    ids = [submit_inference(path.read_bytes(), DEMO).job_id for path in samples[:3]]
    runtime = Runtime()
    try:
        runner = next(iter(runtime.load_active()))
        get_settings()
        items = []
        for job_id in ids:
            payload = payloads.fetch(job_id)
            assert payload is not None
            tensor = preprocess(payload.data, runner.config.input, **image_limits())
            items.append(Prepared(job_id, None, payload.input_hash, utcnow(), tensor, 1.0))
        alone = [runner.loaded.run(item.tensor[None])[0] for item in items]
        # When the middle item's tensor is malformed, so the stacked batch cannot run
        bad = Prepared(ids[1], None, items[1].input_hash, utcnow(), np.zeros((1, 7, 7), np.float32), 1.0)
        outcomes = runner.run_batch([items[0], bad, items[2]])
        outcomes[0].written.result(timeout=30)
    finally:
        runtime.stop()
    # Then only that job failed, with a code, and its neighbours have the results they get alone
    assert [o.error.code if o.error else None for o in outcomes] == [None, "inference_failed", None]
    views = [get_job(job_id) for job_id in ids]
    assert [v["status"] for v in views] == ["succeeded", "failed", "succeeded"]
    assert views[1]["error"]["code"] == "inference_failed"
    for view, expected in zip((views[0], views[2]), (alone[0], alone[2]), strict=True):
        got = np.array(list(view["result"]["probabilities"].values()), dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert {row.job_id for row in audit_rows(ids)} == {ids[0], ids[2]}


def test_non_finite_output_fails_only_that_job(migrated: str, samples: list[Path]) -> None:
    ids = [submit_inference(path.read_bytes(), DEMO).job_id for path in samples[:2]]
    runtime = Runtime()
    try:
        runner = next(iter(runtime.load_active()))
        good = payloads.fetch(ids[0])
        assert good is not None
        tensor = preprocess(good.data, runner.config.input, **image_limits())
        # An input of infinities drives the logits, and so the softmax, to NaN.
        nan_input = np.full_like(tensor, np.inf)
        items = [
            Prepared(ids[0], None, good.input_hash, utcnow(), tensor, 1.0),
            Prepared(ids[1], None, good.input_hash, utcnow(), nan_input, 1.0),
        ]
        outcomes = runner.run_batch(items)
        outcomes[0].written.result(timeout=30)
    finally:
        runtime.stop()
    assert [get_job(job_id)["status"] for job_id in ids] == ["succeeded", "failed"]
    assert get_job(ids[1])["error"]["code"] == "inference_failed"
