"""`onnxq metrics`: the daily metrics table, and `onnxq metrics compute` to compute a day by hand."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from onnxq.errors import OnnxqError

if TYPE_CHECKING:
    from schema.metrics import ModelDay, RouteDay

metrics_app = typer.Typer(help="Daily metrics per model and routing backend.", invoke_without_command=True)
out = Console()


def _yesterday() -> date:
    return datetime.now(UTC).date() - timedelta(days=1)


def _day(text: str | None) -> date:
    if text is None:
        return _yesterday()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD).", param_hint="--date") from None


@metrics_app.callback()
def show(
    ctx: typer.Context,
    model: str | None = typer.Option(None, "--model", help="Only this model (NAME or NAME@VERSION)."),
    days: int = typer.Option(7, "--days", min=1, help="Days back from today (UTC)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the computed daily metrics, newest day first (`onnxq metrics compute` fills them)."""
    if ctx.invoked_subcommand is not None:
        return
    from schema.db import session_scope
    from schema.metrics import daily_metrics

    try:
        with session_scope() as session:
            rows = daily_metrics(session, model=model, days=days, today=datetime.now(UTC).date())
    except OnnxqError as exc:
        raise typer.BadParameter(exc.message, param_hint="--model") from None
    if as_json:
        sys.stdout.write(rows.model_dump_json() + "\n")
        return
    if not rows.models and not rows.routes:
        out.print(f"No daily metrics in the last {days} day(s); `onnxq metrics compute --date YYYY-MM-DD` makes them.")
        return
    if rows.models:
        out.print(model_table(rows.models))
    if rows.routes:
        out.print(_route_table(rows.routes))


def _figure(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def model_table(rows: list[ModelDay]) -> Table:
    """The models table of `onnxq metrics` (also printed by the demo)."""
    table = Table(
        "date",
        "model",
        "requests",
        "failed",
        "p50 inference ms",
        "p95 inference ms",
        "p95 total ms",
        "mean batch",
        "accuracy (n labelled)",
        title="Models",
    )
    for row in rows:
        accuracy = "-" if row.accuracy is None else f"{row.accuracy:.1%}"
        table.add_row(
            row.date.isoformat(),
            f"{row.model}@{row.model_version}",
            str(row.total_requests),
            str(row.failed_requests),
            _figure(row.p50_inference_time_ms),
            _figure(row.p95_inference_time_ms),
            _figure(row.p95_total_ms),
            _figure(row.mean_batch_size, 1),
            f"{accuracy} ({row.labelled_requests})",
        )
    return table


def _route_table(rows: list[RouteDay]) -> Table:
    table = Table(
        "date",
        "served by",
        "requests",
        "fallbacks",
        "cost",
        "all-remote cost",
        "avg latency ms",
        "p95 latency ms",
        title="Routing backends",
    )
    for row in rows:
        table.add_row(
            row.date.isoformat(),
            row.backend or "(no backend)",
            str(row.requests),
            str(row.fallbacks),
            f"{row.cost:.4f}",
            f"{row.all_remote_cost:.4f}",
            _figure(row.avg_latency_ms),
            _figure(row.p95_latency_ms),
        )
    return table


@metrics_app.command("compute")
def compute(
    day: str | None = typer.Option(None, "--date", help="The UTC day (YYYY-MM-DD); yesterday by default."),
) -> None:
    """Compute one day's metrics now, in this process (a rerun replaces the day's rows)."""
    from schema.db import session_scope
    from schema.metrics import compute_day

    when = _day(day)
    try:
        with session_scope() as session:
            models, backends = compute_day(session, when)
    except OnnxqError as exc:
        typer.echo(f"onnxq: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{when.isoformat()}: {models} model row(s), {backends} routing backend row(s) written")
