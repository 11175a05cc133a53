"""`onnxq audit verify` finds an edited, deleted or reordered audit row."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from typer.testing import CliRunner

from onnxq.cli import app
from producer.client import submit_inference
from schema.db import get_engine
from tests.helpers import DEMO, audit_rows, wait_all

runner = CliRunner()


def _run_jobs(samples: list[Path], n: int) -> list[int]:
    ids = [submit_inference(samples[i % len(samples)].read_bytes(), DEMO).job_id for i in range(n)]
    wait_all(ids)
    return [row.id or 0 for row in audit_rows()]


def _verify() -> tuple[int, str]:
    result = runner.invoke(app, ["audit", "verify"])
    return result.exit_code, result.output


def test_verify_passes_then_names_an_edited_row(worker: object, samples: list[Path]) -> None:
    ids = _run_jobs(samples, 6)
    code, output = _verify()
    assert code == 0, output
    assert "6 rows" in output
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE pytorch_inference_logs SET confidence = 0.5 WHERE id = :id"), {"id": ids[3]})
    code, output = _verify()
    assert code == 1
    assert f"row {ids[3]}" in output


def test_verify_finds_a_deleted_row(worker: object, samples: list[Path]) -> None:
    ids = _run_jobs(samples, 5)
    with get_engine().begin() as conn:
        conn.execute(text("DELETE FROM pytorch_inference_logs WHERE id = :id"), {"id": ids[2]})
    code, output = _verify()
    assert code == 1
    assert f"row {ids[3]}" in output and "missing" in output


def test_verify_finds_deleted_last_rows_and_reordering(worker: object, samples: list[Path]) -> None:
    ids = _run_jobs(samples, 5)
    with get_engine().begin() as conn:
        # Swap the content of two rows (a reorder keeping ids).
        rows = conn.execute(
            text("SELECT id, job_id, input_hash FROM pytorch_inference_logs WHERE id IN (:a, :b) ORDER BY id"),
            {"a": ids[0], "b": ids[1]},
        ).all()
        conn.execute(text("UPDATE pytorch_inference_logs SET job_id = 'tmp' WHERE id = :id"), {"id": rows[0].id})
        conn.execute(
            text("UPDATE pytorch_inference_logs SET job_id = :j, input_hash = :h WHERE id = :id"),
            {"j": rows[0].job_id, "h": rows[0].input_hash, "id": rows[1].id},
        )
        conn.execute(
            text("UPDATE pytorch_inference_logs SET job_id = :j, input_hash = :h WHERE id = :id"),
            {"j": rows[1].job_id, "h": rows[1].input_hash, "id": rows[0].id},
        )
    code, output = _verify()
    assert code == 1 and f"row {ids[0]}" in output


def test_verify_finds_truncated_tail(worker: object, samples: list[Path]) -> None:
    ids = _run_jobs(samples, 4)
    with get_engine().begin() as conn:
        conn.execute(text("DELETE FROM pytorch_inference_logs WHERE id = :id"), {"id": ids[-1]})
    code, output = _verify()
    assert code == 1 and "missing" in output


def test_verify_finds_a_row_past_the_chain_head(worker: object, samples: list[Path]) -> None:
    ids = _run_jobs(samples, 3)
    assert _verify()[0] == 0
    # When a row is inserted behind the chain's back, past its head
    with get_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO pytorch_inference_logs (id, model_id, user_id, input_hash, inference_time_ms, confidence,"
                " result, created_at, job_id, batch_size, prev_hash, row_hash)"
                " SELECT id + 100, model_id, user_id, input_hash, inference_time_ms, confidence, result, created_at,"
                " 'forged', batch_size, prev_hash, row_hash FROM pytorch_inference_logs WHERE id = :id"
            ),
            {"id": ids[0]},
        )
    code, output = _verify()
    assert code == 1 and "past the chain head" in output
