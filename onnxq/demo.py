"""`onnxq up` and `onnxq demo`: the embedded stack for a laptop, and a guided first run on it."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from onnxq.settings import get_settings
from onnxq.stack import StackError, free_port, running_stack

DEMO_MODEL = "chest-xray-classifier-demo"
out = Console(width=None if Console().is_terminal else 110)
err = Console(stderr=True)


def up() -> None:
    """Run the whole stack in one process tree (embedded Redis unless REDIS_URL is set, SQLite
    unless DATABASE_URL is set, the HTTP API on 127.0.0.1:$PORT); Ctrl-C or SIGTERM stops it
    cleanly."""
    stop = threading.Event()
    # Both signals handled explicitly: a shell starting `onnxq up &` from a script makes the
    # process ignore SIGINT by default.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with running_stack() as stack:
            settings = get_settings()
            err.print(
                f"onnxq is up: API {stack.url} (docs {stack.url}/docs), queue {settings.redis_url}, "
                f"database {settings.database_url}.\n"
                "Get an API key in another terminal with `onnxq keys create NAME`. Ctrl-C (or SIGTERM) stops it.",
                soft_wrap=True,
            )
            stop.wait()
            err.print("stopping: workers finish the batches in hand…")
    except StackError as exc:
        err.print(f"[red]onnxq up: {exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None


def demo(
    samples: Path = typer.Option(Path("samples"), help="Directory of images to classify."),
    model: str = typer.Option(DEMO_MODEL, help="NAME or NAME@VERSION."),
) -> None:
    """Start the embedded stack, classify the sample images over HTTP, print the results, stop."""
    from sqlmodel import Session

    from producer.http_client import ClientError, OnnxqClient
    from producer.keys import create_key
    from schema.audit import verify_chain
    from schema.db import get_engine

    files = sorted(p for p in samples.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        err.print(f"[red]no sample images in {samples}[/red]")
        raise typer.Exit(1)
    # httpx logs every request at INFO; the web process's own log (demo-web.log) has them.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # A port of its own: the demo's web process lives only for this run, and a fixed port could
    # be held by an `onnxq up` (or anything else) on this machine.
    try:
        with running_stack(
            port=free_port(), web_log=get_settings().data_dir / "demo-web.log", worker_metrics=False, clock=False
        ) as stack:
            # Rotated on every run: the key is used here and never shown.
            key = create_key("demo", replace=True).secret
            ab_test = start_ab_test(model)
            accepted: dict[str, str] = {}
            refused: dict[str, str] = {}
            with OnnxqClient(stack.url, api_key=key) as client:
                for path in files:
                    try:
                        # One user per sample: the A/B test splits users between the versions.
                        accepted[path.name] = client.submit(path, model, user_id=f"demo-{path.stem}")
                    except ClientError as exc:
                        refused[path.name] = f"{exc.code}: {exc.message}"
                err.print(f"submitted {len(accepted)} jobs to {stack.url}; waiting for the worker…")
                views = client.wait(accepted.values(), timeout_s=120)
                # The samples are named after their true class: send it back as feedback, so the
                # day's metrics below have an accuracy.
                for name, job_id in accepted.items():
                    label = label_of(name)
                    if label is not None and views[job_id]["status"] == "succeeded":
                        client.feedback(job_id, label)
    except (StackError, ClientError) as exc:
        err.print(f"[red]onnxq demo: {exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    table = Table("file", "job", "status", "prediction", "conf.", "batch", "total ms")
    for name, job_id in accepted.items():
        view = views[job_id]
        result = view["result"] or {}
        table.add_row(
            name,
            job_id[:8],
            view["status"],
            result.get("prediction", (view["error"] or {}).get("code", "")),
            f"{result['confidence']:.1%}" if result else "",
            str(result.get("batch_size", "")),
            f"{result['timings_ms']['total']:.0f}" if result else "",
        )
    for name, reason in refused.items():
        table.add_row(name, "-", "refused", reason, "", "", "")
    out.print(table)
    with Session(get_engine()) as session:
        report = verify_chain(session, get_settings().audit_key_bytes())
    out.print(f"audit chain: {'OK' if report.ok else 'BROKEN'}, {report.rows_checked} rows")
    show_todays_metrics()
    if ab_test is not None:
        close_ab_test(ab_test)
    if refused or any(v["status"] != "succeeded" for v in views.values()) or not report.ok:
        raise typer.Exit(1)


SAMPLE_LABELS = {"covid-19": "COVID-19", "pneumonia": "Pneumonia", "normal": "Normal"}


def label_of(file_name: str) -> str | None:
    """The true class a sample's name starts with (`pneumonia_2.jpg` → "Pneumonia")."""
    stem = file_name.rsplit("_", 1)[0].lower()
    return SAMPLE_LABELS.get(stem)


def show_todays_metrics() -> None:
    """Compute today's daily metrics by hand (the scheduler does it nightly) and print them."""
    from sqlmodel import Session

    from producer.metrics_cli import model_table
    from schema.db import get_engine, session_scope
    from schema.metrics import compute_day, daily_metrics
    from schema.tables import utcnow

    today = utcnow().date()
    with session_scope() as session:
        compute_day(session, today)
    with Session(get_engine()) as session:
        rows = daily_metrics(session, model=None, days=0, today=today)
    # Wider than the results table: the metrics table has more columns.
    Console(width=None if out.is_terminal else 200).print(model_table(rows.models))


def start_ab_test(model: str) -> str | None:
    """An A/B test between the model's first two versions, if it has two (the demo model does:
    version 2 is the same network), for the demo's jobs; its name, or None."""
    from sqlmodel import col, select

    from schema.abtests import create_test, running_row
    from schema.db import session_scope
    from schema.registry import split_ref
    from schema.tables import PytorchModel, utcnow
    from workers.abtests import close_test

    name, version = split_ref(model)
    if version is not None:
        return None
    with session_scope() as session:
        running = running_row(session, name)
    if running is not None and not running.test_name.startswith("demo-"):
        err.print(f"(no A/B test: {name} is already in your running test {running.test_name!r})", markup=False)
        return None
    if running is not None:
        close_test(running.test_name)  # left running by an interrupted demo
    with session_scope() as session:
        versions = session.exec(
            select(PytorchModel.model_version)
            .where(col(PytorchModel.model_name) == name)
            .order_by(col(PytorchModel.id))
        ).all()
        if len(versions) < 2:
            return None
        test = f"demo-{utcnow():%Y%m%d-%H%M%S}"
        create_test(session, test, model_a=f"{name}@{versions[0]}", model_b=f"{name}@{versions[1]}", min_samples=2)
    return test


def close_ab_test(name: str) -> None:
    """Close the demo's A/B test and print its per-arm figures and verdict."""
    from producer.abtest_cli import print_test
    from workers.abtests import close_test

    print_test(close_test(name))
