"""`onnxq bench`: the ceiling, the naive worker and the real pipeline, measured in one run.

DESIGN.md ("Performance model"): the raw in-process pipeline (decode, preprocess, `session.run` at
the best batch size; no queue, no database) is the ceiling; a naive worker (`workers.naive`: one
`session.run` and one commit per message) is the floor; the real path (`submit_inference` → Redis
→ `run_inference` worker → SQL) is measured between them. Everything runs against a throwaway data
dir and database, and a Redis namespace of its own, so the user's data is never touched.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onnxq.bench_stages import measure_ceiling, measure_workers

DEFAULT_JOBS = 500

out = Console(width=None if Console().is_terminal else 110)
err = Console(stderr=True)


def _reset_caches() -> None:
    """Forget the settings, engine and Redis client built from an older environment."""
    from onnxq.payloads import get_redis
    from onnxq.settings import get_settings
    from schema.db import get_engine

    get_settings.cache_clear()
    get_engine().dispose()
    get_engine.cache_clear()
    get_redis.cache_clear()


@contextmanager
def bench_environment(database_url: str | None) -> Iterator[dict[str, str]]:
    """Point this process (and the env its children get) at a throwaway data dir, database and
    Redis namespace; start the embedded Redis when `REDIS_URL` is unset. Yields that env."""
    from onnxq.settings import get_settings
    from onnxq.stack import embedded_redis

    if "workers.broker" in sys.modules:
        # The broker is bound to REDIS_URL and the namespace when it is first imported.
        raise RuntimeError("onnxq bench must run before workers.broker is imported in this process")
    tmp = Path(tempfile.mkdtemp(prefix="onnxq-bench-"))
    saved = dict(os.environ)
    os.environ["ONNXQ_DATA_DIR"] = str(tmp / "data")
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{tmp / 'data' / 'onnxq.db'}"
    os.environ.setdefault("ONNXQ_AUDIT_KEY", secrets.token_hex(32))
    namespace = f"onnxq-bench-{secrets.token_hex(4)}"
    os.environ["ONNXQ_REDIS_NAMESPACE"] = namespace
    _reset_caches()
    try:
        with ExitStack() as stack:
            settings = get_settings()
            if not settings.redis_url_env:
                os.environ["REDIS_URL"] = stack.enter_context(embedded_redis(settings))
                _reset_caches()
            try:
                yield dict(os.environ)
            finally:
                _drop_namespace(namespace)
                _reset_caches()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


def _drop_namespace(namespace: str) -> None:
    """Delete the payloads and queues this bench left in a shared Redis."""
    from onnxq.payloads import get_redis

    client = get_redis()
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def _prepare_model(ref: str) -> Any:
    """Migrate, sync the model repository, and make `ref` the only active model (so the workers
    load and warm nothing else). Returns its registry row."""
    from sqlalchemy import update
    from sqlmodel import col

    from onnxq.stack import prepare_database
    from schema.db import session_scope
    from schema.registry import resolve_model
    from schema.tables import DeploymentStatus, PytorchModel

    prepare_database()
    with session_scope() as session:
        model = resolve_model(session, ref)
        session.execute(
            update(PytorchModel)
            .where(col(PytorchModel.id) != model.id)
            .values(deployment_status=DeploymentStatus.INACTIVE.value)
        )
    return model


# --- the command ------------------------------------------------------------------------------


def bench(
    model: str = typer.Option(..., "--model", help="NAME or NAME@VERSION under ONNXQ_MODEL_DIR."),
    jobs: int = typer.Option(DEFAULT_JOBS, "--jobs", min=20, help="Images per measurement (at least 20)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    threads: int | None = typer.Option(
        None, "--threads", help="Worker threads for both workers; default: what `onnxq worker` would use."
    ),
    database_url: str | None = typer.Option(
        None, "--database-url", help="An empty, throwaway database to use instead of a temporary SQLite file."
    ),
) -> None:
    """Measure the ceiling, a naive worker and the onnxq pipeline on this machine, in one run."""
    import onnxruntime as ort

    samples = sorted(p for p in Path("samples").iterdir() if p.is_file() and not p.name.startswith("."))
    if not samples:
        err.print("[red]no images in samples/[/red]")
        raise typer.Exit(1)
    images = [path.read_bytes() for path in samples]
    with bench_environment(database_url) as env:
        from onnxq.settings import get_settings
        from producer.client import submit_inference
        from workers.cli import default_threads
        from workers.naive import NAIVE_QUEUE, submit_naive

        row = _prepare_model(model)
        threads = threads or default_threads()
        max_batch = int(row.config.get("batching", {}).get("max_batch_size", 1))
        # As many unfinished jobs as the worker has threads: enough to saturate it, so the
        # throughput is the worker's and not the window's.
        in_flight, warmup = max(threads, 2 * max_batch), max_batch
        data_dir = get_settings().data_dir
        naive_args = [sys.executable, "-m", "dramatiq", "workers.naive", "--processes", "1"]
        naive_args += ["--threads", str(threads), "--queues", NAIVE_QUEUE]
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            ceiling = measure_ceiling(row, images, jobs, progress)
            naive = measure_workers(
                "naive",
                naive_args,
                lambda data: submit_naive(data, model, user_id="bench"),
                images,
                jobs,
                warmup,
                in_flight,
                env,
                data_dir / "naive-worker.log",
                progress,
            )
            pipeline = measure_workers(
                "pipeline",
                [sys.executable, "-m", "onnxq", "worker", "--processes", "1", "--threads", str(threads)],
                lambda data: submit_inference(data, model, user_id="bench").job_id,
                images,
                jobs,
                warmup,
                in_flight,
                env,
                data_dir / "pipeline-worker.log",
                progress,
            )
        database = get_settings().database_url.split(":", 1)[0]
        redis_kind = get_settings().redis_url.split(":", 1)[0]
    report: dict[str, Any] = {
        "model": row.ref,
        "jobs": jobs,
        "best_batch_size": int(ceiling["mean_batch_size"]),
        "worker_threads": threads,
        "in_flight": in_flight,
        "ceiling": ceiling,
        "naive": naive,
        "pipeline": pipeline,
        "ratios": {
            "pipeline_vs_ceiling": pipeline["jobs_per_s"] / ceiling["jobs_per_s"],
            "pipeline_vs_naive": pipeline["jobs_per_s"] / naive["jobs_per_s"],
            "drain_pipeline_vs_ceiling": pipeline["drain"]["jobs_per_s"] / ceiling["jobs_per_s"],
            "drain_pipeline_vs_naive": pipeline["drain"]["jobs_per_s"] / naive["drain"]["jobs_per_s"],
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "onnxruntime_provider": ceiling["provider"],
            "onnxruntime_version": ort.__version__,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "database": database,
            "redis": redis_kind,
        },
    }
    if as_json:
        typer.echo(json.dumps(report))
    else:
        print_report(report)


def print_report(report: dict[str, Any]) -> None:
    """The human-readable table of a bench report."""
    machine = report["machine"]
    table = Table(
        "stage",
        "jobs/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean batch",
        "in flight",
        title=f"{report['model']}: {report['jobs']} jobs, {machine['cpu_count']} CPUs, "
        f"{machine['onnxruntime_provider']}, {report['worker_threads']} worker threads, {machine['database']}",
    )
    ceiling = report["ceiling"]
    table.add_row(
        f"ceiling ({ceiling['mode']})", f"{ceiling['jobs_per_s']:.1f}", "", "", "", f"{report['best_batch_size']}", ""
    )
    for name in ("naive", "pipeline"):
        stage = report[name]
        failed = f" ({stage['failed']} failed)" if stage["failed"] else ""
        table.add_row(
            name + failed,
            f"{stage['jobs_per_s']:.1f}",
            f"{stage['p50_ms']:.0f}",
            f"{stage['p95_ms']:.0f}",
            f"{stage['p99_ms']:.0f}",
            f"{stage['mean_batch_size']:.1f}",
            f"{stage['mean_in_flight']:.1f} / {report['in_flight']}",
        )
    for name in ("naive", "pipeline"):
        drain = report[name]["drain"]
        table.add_row(
            f"{name}, worker alone (drain)",
            f"{drain['jobs_per_s']:.1f}",
            "",
            "",
            "",
            f"{drain['mean_batch_size']:.1f}",
            "",
        )
    out.print(table)
    ratios = report["ratios"]
    out.print(
        f"end to end: pipeline / ceiling {ratios['pipeline_vs_ceiling']:.2f}, "
        f"pipeline / naive {ratios['pipeline_vs_naive']:.2f}"
    )
    out.print(
        f"worker alone: pipeline / ceiling {ratios['drain_pipeline_vs_ceiling']:.2f}, "
        f"pipeline / naive {ratios['drain_pipeline_vs_naive']:.2f}"
    )
