"""`onnxq worker` and `onnxq models …`: running workers and keeping the registry in sync."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session, col, select

from onnxq.settings import get_settings
from schema.db import get_engine, session_scope
from schema.registry import active_models
from schema.tables import PytorchModel
from workers.metrics import clear_metrics_dir
from workers.repository import sync

models_app = typer.Typer(help="The model repository and registry.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

MIN_WORKER_THREADS = 8
# Threads per batch slot: while one batch runs and another commits, a third must be decoding
# and gathering, or batches close half full (measured: 16 threads at max batch 16 averaged 8.5
# items per batch; 64 threads, 15.8).
BATCHES_IN_FLIGHT = 4


@models_app.command("sync")
def models_sync() -> None:
    """Register every model under the model repository (sha256, graph shapes, model.toml)."""
    model_dir = get_settings().model_dir
    with session_scope() as session:
        report = sync(session, model_dir)
    for ref in report.added:
        typer.echo(f"added      {ref}")
    for ref in report.updated:
        typer.echo(f"updated    {ref}")
    for ref in report.unchanged:
        typer.echo(f"unchanged  {ref}")
    for problem in report.problems:
        err.print(f"[yellow]skipped[/yellow]    {problem}")
    if not (report.added or report.updated or report.unchanged):
        err.print(f"[red]no models found under {model_dir}[/red]")
        raise typer.Exit(1)


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="One JSON object per model.")) -> None:
    """Show the registered models."""
    with Session(get_engine()) as session:
        rows = session.exec(select(PytorchModel).order_by(col(PytorchModel.model_name), col(PytorchModel.id))).all()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.model_dump(mode="json", exclude={"config"})))
        return
    # Narrow enough for an 80-column terminal; domain, labels and full hashes are in --json.
    table = Table("model", "status", "input (CxHxW)", "sha256", "accuracy")
    for row in rows:
        table.add_row(
            row.ref,
            row.deployment_status,
            "x".join(str(d) for d in (row.input_shape or [])[1:]),
            row.sha256[:8],
            f"{row.accuracy:.3f}" if row.accuracy is not None else "-",
        )
    out.print(table)


def default_threads() -> int:
    """Enough worker threads for full batches of the largest model to form back to back."""
    configured = get_settings().worker_threads
    if configured:
        return configured
    with Session(get_engine()) as session:
        sizes = [int(m.config.get("batching", {}).get("max_batch_size", 1)) for m in active_models(session)]
    return max([MIN_WORKER_THREADS, *(BATCHES_IN_FLIGHT * size for size in sizes)])


def worker(
    processes: int | None = typer.Option(None, "--processes", "-p", help="Worker processes (one per GPU)."),
    threads: int | None = typer.Option(
        None, "--threads", "-t", help="Threads per process; default: 4x the largest model max_batch_size, ≥ 8."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run a Dramatiq worker that serves every active model (SIGTERM: finish the batch, exit)."""
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    from workers.broker import INFERENCE_QUEUE, MAINTENANCE_QUEUE, ROUTING_QUEUE

    settings = get_settings()
    threads = threads or default_threads()
    if settings.worker_metrics_port:
        clear_metrics_dir(settings)
    # The children are forked: they must not inherit this process's database connections.
    get_engine().dispose()
    get_engine.cache_clear()
    argv = [
        "workers.actors",
        "--processes", str(processes or settings.worker_processes),
        "--threads", str(threads),
        "--queues", INFERENCE_QUEUE, ROUTING_QUEUE, MAINTENANCE_QUEUE,
    ]  # fmt: skip
    if verbose:
        argv.append("--verbose")
    raise typer.Exit(dramatiq_main(make_argument_parser().parse_args(argv)))  # type: ignore[no-untyped-call]
