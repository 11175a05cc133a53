"""Jobs end to end through real Redis, a real Dramatiq worker, ONNX Runtime and SQL."""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session, select

from onnxq import payloads
from onnxq.errors import OnnxqError
from onnxq.images import image_limits
from onnxq.settings import get_settings
from producer.client import get_job, submit_inference
from schema.audit import verify_chain
from schema.db import get_engine
from schema.tables import Job, PytorchModel
from tests.conftest import AUDIT_KEY
from tests.corpus import corpus
from tests.helpers import DEMO, audit_rows, wait_all
from workers.modelconfig import ModelConfig
from workers.preprocess import preprocess
from workers.repository import check_file
from workers.sessions import load_session


def _alone(data: bytes) -> np.ndarray:
    """The probabilities of one image run alone (batch of 1) outside the queue."""
    with Session(get_engine()) as session:
        model = session.exec(select(PytorchModel).where(PytorchModel.model_name == DEMO)).one()
    config = ModelConfig.model_validate(model.config)
    loaded = load_session(check_file(model, get_settings().model_dir), config, ref=model.ref)
    get_settings()
    tensor = preprocess(data, config.input, **image_limits())
    return loaded.run(tensor[None])[0]


def test_samples_are_classified_batched_equal_to_alone(worker: object, samples: list[Path]) -> None:
    # Given many concurrent submissions of the sample images
    files = samples * 8
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda p: submit_inference(p.read_bytes(), DEMO, user_id="u1"), files))
    ids = [o.job_id for o in outcomes]
    # When the worker has run them
    views = wait_all(ids)
    # Then every job succeeded with the job shape, and the label is the file's class
    for path, job_id in zip(files, ids, strict=True):
        view = views[job_id]
        assert view["status"] == "succeeded", view
        result = view["result"]
        assert set(result) >= {"model", "model_version", "prediction", "confidence", "probabilities", "batch_size"}
        assert set(result["timings_ms"]) == {"queue", "preprocessing", "inference", "total"}
        assert result["prediction"].lower() == path.name.rsplit("_", 1)[0].lower()
    # And batched outputs equal each image run alone
    for path in samples:
        alone = _alone(path.read_bytes())
        job = views[ids[files.index(path)]]["result"]
        batched = np.array(list(job["probabilities"].values()), dtype=np.float32)
        np.testing.assert_allclose(batched, alone, atol=1e-5)
    # And batches larger than one formed (read from the audit rows)
    rows = audit_rows(ids)
    assert len(rows) == len(ids)
    assert max(row.batch_size for row in rows) > 1


def test_audit_rows_hash_inputs_and_chain(worker: object, samples: list[Path]) -> None:
    data = samples[0].read_bytes()
    outcome = submit_inference(data, DEMO, user_id="alice")
    wait_all([outcome.job_id])
    (row,) = audit_rows([outcome.job_id])
    assert row.input_hash == hmac.new(AUDIT_KEY.encode(), data, hashlib.sha256).hexdigest()
    assert row.user_id == "alice"
    assert row.inference_time_ms > 0
    with Session(get_engine()) as session:
        assert verify_chain(session, get_settings().audit_key_bytes()).ok
    # No raw bytes anywhere in the row.
    assert data[:32].hex() not in str(row.model_dump())


def test_bad_inputs_fail_their_own_job_while_the_batch_succeeds(worker: object) -> None:
    accepted: dict[str, str] = {}
    refused: dict[str, str] = {}
    cases = corpus()
    for name, (data, _) in cases.items():
        try:
            accepted[name] = submit_inference(data, DEMO).job_id
        except OnnxqError as exc:
            refused[name] = exc.code
    views = wait_all(list(accepted.values()))
    for name, (_, expected) in cases.items():
        if expected is None:
            assert views[accepted[name]]["status"] == "succeeded", (name, views[accepted[name]])
        elif name in refused:
            assert refused[name] == expected, name
        else:
            view = views[accepted[name]]
            assert view["status"] == "failed" and view["error"]["code"] == expected, (name, view)
    # Refused inputs were never enqueued: no job, no payload.
    assert "huge.bin" in refused and "bomb.png" in refused and "text.png" in refused


def test_idempotency_key_returns_the_same_job(worker: object, samples: list[Path]) -> None:
    data = samples[0].read_bytes()
    first = submit_inference(data, DEMO, user_id="u1", idempotency_key="k-1")
    again = submit_inference(data, DEMO, user_id="u1", idempotency_key="k-1")
    other_user = submit_inference(data, DEMO, user_id="u2", idempotency_key="k-1")
    assert again.job_id == first.job_id and again.reused
    assert other_user.job_id != first.job_id
    wait_all([first.job_id, other_user.job_id])
    assert len(audit_rows([first.job_id])) == 1


def test_redelivered_message_adds_no_second_audit_row(worker: object, samples: list[Path]) -> None:
    from workers.actors import run_inference

    data = samples[0].read_bytes()
    outcome = submit_inference(data, DEMO)
    wait_all([outcome.job_id])
    # When the same message arrives again, payload gone (normal) and payload still there (crash
    # between commit and payload delete)
    run_inference.send(outcome.job_id)
    with Session(get_engine()) as session:
        job = session.get(Job, outcome.job_id)
        assert job is not None and job.model_id is not None
        payloads.put(payloads.Payload(job.id, job.model_id, None, job.input_hash or "", job.created_at, data), 60)
    run_inference.send(outcome.job_id)
    from workers.broker import broker

    broker.join("inference", timeout=30_000)
    assert len(audit_rows([outcome.job_id])) == 1
    assert get_job(outcome.job_id)["status"] == "succeeded"


def test_unknown_model_and_job_are_clear_errors(migrated: str) -> None:
    with pytest.raises(OnnxqError) as caught:
        submit_inference(corpus()["good.png"][0], "no-such-model")
    assert caught.value.code == "unknown_model"
    with pytest.raises(OnnxqError) as caught:
        submit_inference(corpus()["good.png"][0], f"{DEMO}@99")
    assert caught.value.code == "unknown_model"
    with pytest.raises(OnnxqError) as caught:
        get_job("0" * 32)
    assert caught.value.code == "job_not_found"


def test_no_image_bytes_in_logs_or_sql(worker: object, samples: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    import base64

    from sqlalchemy import text

    caplog.set_level("DEBUG")
    data = samples[0].read_bytes()
    bad = corpus()["truncated.jpg"][0]
    ids = [submit_inference(data, DEMO, user_id="p").job_id, submit_inference(bad, DEMO).job_id]
    wait_all(ids)
    needles = [data[8:40].hex(), base64.b64encode(data[:48]).decode()[8:40], "IHDR", "JFIF", bad[6:30].hex()]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert not [n for n in needles if n in logged]
    with get_engine().connect() as conn:
        dumped = "\n".join(
            str(row)
            for table in ("jobs", "pytorch_inference_logs")
            for row in conn.execute(text(f"SELECT * FROM {table}")).all()
        )
    assert not [n for n in needles if n in dumped]


def test_an_idle_worker_looks_at_its_queues_every_idle_poll_interval(worker: object) -> None:
    # Dramatiq's default (1 s) would delay the first job after a quiet spell by up to a second.
    from onnxq.settings import get_settings

    timeouts = {consumer.worker_timeout for consumer in worker.consumers.values()}  # type: ignore[attr-defined]
    assert timeouts == {get_settings().worker_idle_poll_ms}
