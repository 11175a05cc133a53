"""The `onnxq` command (typer's CliRunner on the app), the settings and the import names."""

from __future__ import annotations

import collections
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from onnxq.cli import app
from onnxq.settings import Settings
from producer.client import submit_inference
from schema import migrate
from tests.conftest import REPO
from tests.helpers import DEMO, wait_all
from workers.repository import file_sha256

runner = CliRunner()
JOB_KEYS = {"job_id", "kind", "status", "created_at", "started_at", "finished_at", "result", "error"}


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _label(path: Path) -> str:
    return path.name.rsplit("_", 1)[0].lower()


@pytest.fixture()
def bad_files(tmp_path: Path) -> tuple[Path, Path]:
    """A text file renamed .png and an 11 MiB file."""
    text = tmp_path / "notes.png"
    text.write_text("this is not an image, just text renamed .png\n" * 10)
    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(11 * 1024 * 1024)
    return text, huge


# --- onnxq models -------------------------------------------------------------------------------


def test_models_sync_then_list(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.cli

    # Wide enough that rich does not elide the table's cells (CliRunner is not a terminal).
    monkeypatch.setattr(workers.cli, "out", Console(width=250))
    migrate.upgrade()
    first = invoke("models", "sync")
    assert first.exit_code == 0, first.output
    assert f"added      {DEMO}@1" in first.stdout.splitlines()
    again = invoke("models", "sync")
    assert again.exit_code == 0, again.output
    assert f"unchanged  {DEMO}@1" in again.stdout.splitlines()
    assert "added" not in again.stdout and "updated" not in again.stdout

    listed = invoke("models", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {(row["model_name"], row["model_version"]): row for row in _json_lines(listed.stdout)}
    demo = rows[(DEMO, "1")]
    assert demo["sha256"] == file_sha256(REPO / "onnx" / DEMO / "1" / "model.onnx")
    assert demo["input_shape"][1:] == [1, 128, 128]
    assert demo["output_shape"][-1] == 3
    assert demo["labels"] == ["COVID-19", "Pneumonia", "Normal"]
    assert demo["deployment_status"] == "active"
    assert "config" not in demo

    table = invoke("models", "list")
    assert table.exit_code == 0, table.output
    (line,) = [line for line in table.stdout.splitlines() if f" {DEMO}@1 " in line]
    assert demo["sha256"][:8] in line and "active" in line and "1x128x128" in line


def test_models_sync_with_no_models_fails(env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxq.settings import get_settings

    migrate.upgrade()
    monkeypatch.setenv("ONNXQ_MODEL_DIR", str(tmp_path / "empty"))
    get_settings.cache_clear()
    result = invoke("models", "sync")
    assert result.exit_code == 1
    assert "no models found" in result.stderr


# --- onnxq submit / status ----------------------------------------------------------------------


def test_submit_wait_json_one_line_per_file(worker: Any, samples: list[Path], bad_files: tuple[Path, Path]) -> None:
    text, huge = bad_files
    files = [samples[0], text, *samples[1:3], huge, *samples[3:]]
    result = invoke("submit", "--model", DEMO, "--wait", "--json", *map(str, files))
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    # Exit status 1: some files were refused.
    assert result.exit_code == 1, result.output
    lines = _json_lines(result.stdout)
    assert collections.Counter(line["file"] for line in lines) == collections.Counter(map(str, files)), lines
    by_file = {line["file"]: line for line in lines}
    assert by_file[str(text)]["job_id"] is None
    assert by_file[str(text)]["status"] == "refused"
    assert by_file[str(text)]["error"]["code"] == "not_an_image"
    assert by_file[str(huge)]["job_id"] is None
    assert by_file[str(huge)]["error"]["code"] == "input_too_large"
    for path in samples:
        line = by_file[str(path)]
        assert set(line) == {"file", *JOB_KEYS}, line
        assert line["status"] == "succeeded", line
        assert line["error"] is None
        assert line["result"]["prediction"].lower() == _label(path)
    # In the order the files were given.
    assert [line["file"] for line in lines] == [str(f) for f in files]


def test_submit_wait_plain_one_line_per_file(worker: Any, samples: list[Path], bad_files: tuple[Path, Path]) -> None:
    text, huge = bad_files
    files = [*samples[:2], text, huge]
    result = invoke("submit", "--model", DEMO, "--wait", *map(str, files))
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(files), lines
    for path in files:
        (line,) = [line for line in lines if line.startswith(f"{path}  ")]
        if path in (text, huge):
            assert "refused" in line and ("not_an_image" in line or "input_too_large" in line), line
        else:
            assert "succeeded" in line, line


def test_submit_only_good_files_exits_zero(worker: Any, samples: list[Path]) -> None:
    result = invoke("submit", "--model", DEMO, "--wait", "--json", *map(str, samples))
    assert result.exit_code == 0, result.output
    lines = _json_lines(result.stdout)
    assert len(lines) == len(samples)
    assert all(line["status"] == "succeeded" for line in lines), lines


def test_submit_without_wait_prints_queued_jobs(migrated: str, samples: list[Path]) -> None:
    result = invoke("submit", "--model", f"{DEMO}@1", "--json", str(samples[0]))
    assert result.exit_code == 0, result.output
    (line,) = _json_lines(result.stdout)
    assert line["file"] == str(samples[0])
    assert line["status"] == "queued"
    assert len(line["job_id"]) == 32


def test_submit_unknown_model_is_refused(migrated: str, samples: list[Path]) -> None:
    result = invoke("submit", "--model", "no-such-model", "--json", str(samples[0]))
    assert result.exit_code == 1
    (line,) = _json_lines(result.stdout)
    assert line["job_id"] is None and line["error"]["code"] == "unknown_model"


def test_submit_idempotency_key_returns_the_same_job(migrated: str, samples: list[Path]) -> None:
    args = ("submit", "--model", DEMO, "--user", "u1", "--idempotency-key", "scan-0001", "--json", str(samples[0]))
    first = invoke(*args)
    again = invoke(*args)
    assert first.exit_code == 0 and again.exit_code == 0, (first.output, again.output)
    (one,) = _json_lines(first.stdout)
    (two,) = _json_lines(again.stdout)
    assert one["job_id"] and one["job_id"] == two["job_id"]
    other_user = invoke("submit", "--model", DEMO, "--user", "u2", "--idempotency-key", "scan-0001", "--json")
    assert other_user.exit_code != 0  # no file given: usage error, nothing submitted


def test_status_json_prints_the_job_shape(worker: Any, samples: list[Path]) -> None:
    outcome = submit_inference(samples[0].read_bytes(), DEMO)
    wait_all([outcome.job_id])
    result = invoke("status", outcome.job_id, "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert set(view) == JOB_KEYS
    assert view["job_id"] == outcome.job_id
    assert view["kind"] == "inference"
    assert view["status"] == "succeeded"
    assert view["error"] is None
    assert all(view[key] for key in ("created_at", "started_at", "finished_at"))
    assert set(view["result"]["timings_ms"]) == {"queue", "preprocessing", "inference", "total"}

    plain = invoke("status", outcome.job_id)
    assert plain.exit_code == 0, plain.output
    assert outcome.job_id in plain.stdout and "succeeded" in plain.stdout


def test_status_of_an_unknown_job_fails_with_its_code(migrated: str) -> None:
    result = invoke("status", "0" * 32, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "job_not_found"
    plain = invoke("status", "0" * 32)
    assert plain.exit_code == 1
    assert "job_not_found" in plain.stderr


# --- settings -----------------------------------------------------------------------------------

PRODUCTION_NEEDS = ("ONNXQ_AUDIT_KEY", "DATABASE_URL", "REDIS_URL")


def test_production_refuses_implicit_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONNXQ_ENV", "production")
    monkeypatch.setenv("ONNXQ_DATA_DIR", str(tmp_path / "data"))
    for name in PRODUCTION_NEEDS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError) as caught:
        Settings()
    for name in PRODUCTION_NEEDS:
        assert name in str(caught.value)
    # One missing is named alone.
    monkeypatch.setenv("ONNXQ_AUDIT_KEY", "k")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/onnxq")
    with pytest.raises(ValueError) as caught:
        Settings()
    assert "REDIS_URL" in str(caught.value) and "DATABASE_URL" not in str(caught.value).split("needs", 1)[1][:40]
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    assert Settings().env == "production"
    assert not (tmp_path / "data").exists()  # nothing generated in production


def test_production_cli_says_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_NEEDS}
    env.update(ONNXQ_ENV="production", ONNXQ_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        [sys.executable, "-m", "onnxq", "models", "list"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ONNXQ_ENV=production needs ONNXQ_AUDIT_KEY, DATABASE_URL, REDIS_URL" in done.stderr, done.stderr[-2000:]


def test_generated_audit_key_is_created_once_and_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    monkeypatch.delenv("ONNXQ_AUDIT_KEY", raising=False)
    monkeypatch.setenv("ONNXQ_DATA_DIR", str(data))
    key = Settings().audit_key_bytes()
    path = data / "audit.key"
    assert path.is_file()
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(key) == 64 and path.read_bytes().strip() == key
    stat = path.stat()
    # A new process (new settings) reuses it, untouched; no temporary files are left.
    assert Settings().audit_key_bytes() == key
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert [p.name for p in data.iterdir()] == ["audit.key"]
    # An explicit key wins over the file.
    monkeypatch.setenv("ONNXQ_AUDIT_KEY", "explicit")
    assert Settings().audit_key_bytes() == b"explicit"


def test_generated_audit_key_race_yields_one_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    monkeypatch.delenv("ONNXQ_AUDIT_KEY", raising=False)
    monkeypatch.setenv("ONNXQ_DATA_DIR", str(data))
    settings = [Settings() for _ in range(8)]
    keys: list[bytes] = []
    barrier = threading.Barrier(len(settings))

    def generate(s: Settings) -> None:
        barrier.wait(10)
        keys.append(s.audit_key_bytes())

    threads = [threading.Thread(target=generate, args=(s,)) for s in settings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(keys) == len(settings) and len(set(keys)) == 1
    assert [p.name for p in data.iterdir()] == ["audit.key"]


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u@db:5432/onnxq", "postgresql+psycopg://u@db:5432/onnxq"),
        ("postgres://u:p@db/onnxq", "postgresql+psycopg://u:p@db/onnxq"),
        ("postgresql+psycopg://u@db/onnxq", "postgresql+psycopg://u@db/onnxq"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_database_url_uses_psycopg3(monkeypatch: pytest.MonkeyPatch, given: str, used: str) -> None:
    monkeypatch.setenv("DATABASE_URL", given)
    assert Settings().database_url == used


def test_database_url_defaults_to_sqlite_in_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("ONNXQ_DATA_DIR", str(tmp_path))
    assert Settings().database_url == f"sqlite:///{(tmp_path / 'onnxq.db').resolve()}"


# --- import names -------------------------------------------------------------------------------

TOP_LEVEL = ("schema", "producer", "workers", "scheduler", "onnxq")


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_name_is_this_repos_package(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve() == REPO / name / "__init__.py"
    owners = set(importlib.metadata.packages_distributions().get(name, []))
    assert owners <= {"onnxq"}, f"{name!r} is also provided by {owners - {'onnxq'}}"


def test_top_level_names_resolve_to_this_repo_from_anywhere(tmp_path: Path) -> None:
    """Outside the repository (no cwd on sys.path), the installed onnxq still provides them."""
    code = f"import json, importlib; print(json.dumps({{n: importlib.import_module(n).__file__ for n in {TOP_LEVEL}}}))"
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)
    for name in TOP_LEVEL:
        # None: a namespace package, i.e. the package's __init__ never ran (e.g. a stale editable
        # install made before the package had one).
        assert files[name] is not None, f"{name!r} imports as a namespace package: {files}"
        assert Path(files[name]).resolve() == REPO / name / "__init__.py", files


def test_idempotency_key_with_another_image_is_a_conflict(migrated: str, samples: list[Path]) -> None:
    from onnxq.errors import OnnxqError
    from producer.client import submit_inference

    first = submit_inference(samples[0].read_bytes(), DEMO, user_id="u", idempotency_key="same")
    with pytest.raises(OnnxqError) as caught:
        submit_inference(samples[1].read_bytes(), DEMO, user_id="u", idempotency_key="same")
    assert caught.value.code == "idempotency_conflict"
    # The message never names the other job: over HTTP it could be another tenant's.
    assert first.job_id not in caught.value.message and "different image" in caught.value.message


def test_status_accepts_a_unique_prefix(migrated: str, samples: list[Path]) -> None:
    from producer.client import submit_inference

    job_id = submit_inference(samples[0].read_bytes(), DEMO).job_id
    result = runner.invoke(app, ["status", job_id[:8], "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["job_id"] == job_id
    short = runner.invoke(app, ["status", job_id[:4]])
    assert short.exit_code == 1


def test_unmigrated_database_is_a_clear_error(env: str, samples: list[Path]) -> None:
    from onnxq.errors import OnnxqError
    from producer.client import submit_inference

    with pytest.raises(OnnxqError) as caught:
        submit_inference(samples[0].read_bytes(), DEMO)
    assert caught.value.code == "database_not_migrated"
    assert "onnxq db upgrade" in caught.value.message


def test_queue_down_at_send_leaves_no_job_behind(migrated: str, samples: list[Path]) -> None:
    # Given a Dramatiq actor whose broker points at a Redis that does not answer
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from sqlmodel import Session, col, func, select

    from onnxq.errors import OnnxqError
    from schema.db import get_engine
    from schema.tables import Job

    dead = RedisBroker(url="redis://127.0.0.1:1/0", socket_connect_timeout=1)

    @dramatiq.actor(broker=dead, queue_name="nowhere")
    def nowhere(job_id: str) -> None:  # pragma: no cover - never runs
        pass

    # When a submission reaches the enqueue step and it fails
    with pytest.raises(OnnxqError) as caught:
        submit_inference(samples[0].read_bytes(), DEMO, user_id="u", idempotency_key="k-down", actor=nowhere)
    assert caught.value.code == "service_unavailable"
    # Then no job row is left, and the same key works once the queue is back
    with Session(get_engine()) as session:
        assert (
            session.exec(select(func.count()).select_from(Job).where(col(Job.idempotency_key) == "k-down")).one() == 0
        )
    again = submit_inference(samples[0].read_bytes(), DEMO, user_id="u", idempotency_key="k-down")
    assert not again.reused and again.status == "queued"
