"""`onnxq up` and `onnxq demo`: the embedded stack for a laptop, and a guided first run on it."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from onnxq.errors import OnnxqError
from onnxq.settings import get_settings
from onnxq.stack import running_stack

DEMO_MODEL = "chest-xray-classifier-demo"
out = Console(width=None if Console().is_terminal else 110)
err = Console(stderr=True)


def up() -> None:
    """Run the whole stack in one process tree (embedded Redis unless REDIS_URL is set, SQLite
    unless DATABASE_URL is set); Ctrl-C or SIGTERM stops it cleanly."""
    stop = threading.Event()
    # Both signals handled explicitly: a shell starting `onnxq up &` from a script makes the
    # process ignore SIGINT by default.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with running_stack():
        settings = get_settings()
        err.print(
            f"onnxq is up: queue {settings.redis_url}, database {settings.database_url}. Ctrl-C (or SIGTERM) stops it."
        )
        stop.wait()
        err.print("stopping: workers finish the batches in hand…")


def demo(
    samples: Path = typer.Option(Path("samples"), help="Directory of images to classify."),
    model: str = typer.Option(DEMO_MODEL, help="NAME or NAME@VERSION."),
) -> None:
    """Start the embedded stack, classify the sample images, print the results, stop."""
    from sqlmodel import Session

    from producer.client import submit_inference, wait_for_jobs
    from schema.audit import verify_chain
    from schema.db import get_engine

    files = sorted(p for p in samples.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        err.print(f"[red]no sample images in {samples}[/red]")
        raise typer.Exit(1)
    with running_stack():
        accepted: dict[str, str] = {}
        refused: dict[str, str] = {}
        for path in files:
            try:
                accepted[path.name] = submit_inference(path.read_bytes(), model, user_id="demo").job_id
            except OnnxqError as exc:
                refused[path.name] = f"{exc.code}: {exc.message}"
        err.print(f"submitted {len(accepted)} jobs; waiting for the worker…")
        views = wait_for_jobs(accepted.values(), timeout_s=120)
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
    if refused or any(v["status"] != "succeeded" for v in views.values()) or not report.ok:
        raise typer.Exit(1)
