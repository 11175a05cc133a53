"""The model repository on disk: tampered files are refused, fixed-batch graphs are served one by
one. Every test works on a copy of `onnx/` in its own directory, never on the repository's."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session, select

from onnxq.errors import ModelChecksumMismatch, ModelFileMissing
from onnxq.settings import get_settings
from producer.client import submit_inference
from schema import migrate
from schema.db import get_engine, session_scope
from schema.tables import PytorchModel
from tests.conftest import REPO
from tests.helpers import DEMO, audit_rows, in_process_worker, wait_all
from workers.modelconfig import ModelConfig
from workers.repository import check_file, file_sha256, sync
from workers.runtime import Runtime
from workers.sessions import load_session

FIXED = "fixed-batch-demo"
FIXED_TOML = """\
description = "Test graph with a fixed batch dimension of 1."
domain = "medical"
labels = ["COVID-19", "Pneumonia", "Normal"]

[input]
width = 128
height = 128
color_mode = "L"
mean = [0.5]
std = [0.25]

[output]
kind = "logits"

[batching]
max_batch_size = 16
max_wait_ms = 5
"""


@pytest.fixture()
def model_dir(env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A migrated database and ONNXQ_MODEL_DIR pointing at a private copy of the demo model."""
    copy = tmp_path / "onnx"
    # Version 1 only (version 2, for the demo's A/B test, links to the same file).
    shutil.copytree(REPO / "onnx" / DEMO / "1", copy / DEMO / "1")
    monkeypatch.setenv("ONNXQ_MODEL_DIR", str(copy))
    get_settings.cache_clear()
    assert get_settings().model_dir == copy
    migrate.upgrade()
    return copy


def _model(name: str) -> PytorchModel:
    with Session(get_engine()) as session:
        return session.exec(select(PytorchModel).where(PytorchModel.model_name == name)).one()


def _sync(model_dir: Path) -> Any:
    with session_scope() as session:
        return sync(session, model_dir)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_model_file_is_refused_and_its_jobs_fail(model_dir: Path, samples: list[Path]) -> None:
    # Given the demo model registered from the copy
    report = _sync(model_dir)
    assert f"{DEMO}@1" in report.added
    model = _model(DEMO)
    path = model_dir / model.file_path
    assert check_file(model, model_dir) == path
    # When one byte of the file changes after sync
    _flip_a_byte(path)
    # Then the file check refuses it with its code
    with pytest.raises(ModelChecksumMismatch) as caught:
        check_file(model, model_dir)
    assert caught.value.code == "model_checksum_mismatch"
    assert "onnxq models sync" in caught.value.message
    # And a worker runtime does not load it, now or on demand
    runtime = Runtime()
    try:
        assert runtime.load_active() == []
        assert model.id is not None
        with pytest.raises(ModelChecksumMismatch):
            runtime.runner(model.id)
    finally:
        runtime.stop()
    # And its jobs fail with that code (not retried forever, not lost)
    with in_process_worker():
        outcome = submit_inference(samples[0].read_bytes(), DEMO)
        view = wait_all([outcome.job_id], timeout_s=30)[outcome.job_id]
    assert view["status"] == "failed", view
    assert view["error"]["code"] == "model_checksum_mismatch", view
    assert audit_rows([outcome.job_id]) == []


def test_missing_model_file_is_refused_as_retryable(model_dir: Path) -> None:
    # A file missing on this host is the host's problem, not the job's: another worker may serve it.
    _sync(model_dir)
    model = _model(DEMO)
    (model_dir / model.file_path).unlink()
    with pytest.raises(ModelFileMissing) as caught:
        check_file(model, model_dir)
    assert caught.value.code == "model_file_missing"
    assert caught.value.retryable


def test_resync_after_a_change_updates_the_registry(model_dir: Path) -> None:
    _sync(model_dir)
    path = model_dir / _model(DEMO).file_path
    _flip_a_byte(path)
    report = _sync(model_dir)
    # The flipped byte lies in the weights: the graph still loads and the new sha256 is recorded.
    assert report.updated == [f"{DEMO}@1"], report
    assert _model(DEMO).sha256 == file_sha256(path)
    assert check_file(_model(DEMO), model_dir) == path


def _write_fixed_batch_model(directory: Path) -> None:
    """input [1,1,128,128] → GlobalAveragePool → Flatten → MatMul → logits [1,3]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([[1.0, 0.0, -1.0]], dtype=np.float32), name="W")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "fixed_batch",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 128, 128])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True)
    onnx.save(model, str(directory / "model.onnx"))
    (directory / "model.toml").write_text(FIXED_TOML)


def test_fixed_batch_dimension_model_is_served_one_by_one(
    model_dir: Path, samples: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a model whose graph fixes the batch dimension to 1
    _write_fixed_batch_model(model_dir / FIXED / "1")
    # When it is synced
    report = _sync(model_dir)
    # Then it is registered with its declared shapes
    assert f"{FIXED}@1" in report.added, report
    assert not report.problems, report.problems
    model = _model(FIXED)
    assert model.input_shape == [1, 1, 128, 128]
    assert model.output_shape == [1, 3]
    # And it loads with batch size 1, saying so in a warning
    caplog.set_level(logging.WARNING, logger="workers.sessions")
    config = ModelConfig.model_validate(model.config)
    assert config.batching.max_batch_size == 16
    loaded = load_session(check_file(model, model_dir), config, ref=model.ref)
    assert loaded.max_batch_size == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(model.ref in m and "fixed batch dimension" in m and "batch size 1" in m for m in warnings), warnings
    # And its jobs run, each in a batch of one, even when many arrive together
    with in_process_worker():
        ids = [submit_inference(p.read_bytes(), FIXED).job_id for p in samples * 2]
        views = wait_all(ids, timeout_s=60)
    for view in views.values():
        assert view["status"] == "succeeded", view
        assert view["result"]["batch_size"] == 1
        assert view["result"]["model"] == FIXED
    assert {row.batch_size for row in audit_rows(ids)} == {1}


def test_batching_defaults_come_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxq.settings import get_settings
    from workers.modelconfig import load_config

    toml = tmp_path / "model.toml"
    toml.write_text(
        'labels = ["a", "b"]\n[input]\nwidth = 8\nheight = 8\ncolor_mode = "L"\nmean = [0.5]\nstd = [0.5]\n'
    )
    monkeypatch.setenv("ONNXQ_DEFAULT_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("ONNXQ_DEFAULT_MAX_WAIT_MS", "2.5")
    get_settings.cache_clear()
    try:
        config = load_config(toml)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert (config.batching.max_batch_size, config.batching.max_wait_ms) == (4, 2.5)
