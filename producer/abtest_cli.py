"""`onnxq abtest`: create, list, show and close A/B tests between two versions of a model, or
between two router backends for the medium queries."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from onnxq.errors import OnnxqError

if TYPE_CHECKING:
    from schema.abtests import ABTestView

abtest_app = typer.Typer(
    help="A/B tests between two versions of a model, or two router backends.", no_args_is_help=True
)
out = Console()


def _ends(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD or an ISO time).", param_hint="--ends") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _fail(exc: OnnxqError) -> typer.Exit:
    typer.echo(f"onnxq: {exc.message}", err=True)
    return typer.Exit(1)


@abtest_app.command("create")
def create(
    name: str = typer.Argument(..., help="A name for the test."),
    model_a: str | None = typer.Option(None, "--model-a", help="Arm A, NAME@VERSION (usually the current version)."),
    model_b: str | None = typer.Option(None, "--model-b", help="Arm B, NAME@VERSION (the challenger)."),
    backend_a: str | None = typer.Option(
        None, "--backend-a", help="A routing test instead: arm A, a backend of the router config."
    ),
    backend_b: str | None = typer.Option(None, "--backend-b", help="A routing test: arm B, another backend."),
    split: int = typer.Option(50, "--split", min=1, max=99, help="Percent of the jobs sent to B."),
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="Models: accuracy (from feedback, the default) or latency. Backends: latency (the default) or cost.",
    ),
    min_samples: int = typer.Option(100, "--min-samples", min=2, help="Per arm, before the test may close early."),
    ends: str | None = typer.Option(None, "--ends", help="Close at this UTC date/time whatever the figures."),
    auto_promote: bool = typer.Option(False, "--auto-promote", help="Make the winner the only active version."),
) -> None:
    """Start splitting the jobs of a model name between two of its versions (--model-a/--model-b),
    or the router's medium queries between two backends (--backend-a/--backend-b)."""
    from schema.abtests import create_test
    from schema.db import session_scope

    try:
        with session_scope() as session:
            test = create_test(
                session,
                name,
                model_a=model_a,
                model_b=model_b,
                backend_a=backend_a,
                backend_b=backend_b,
                split_percent=split,
                metric=metric,
                min_samples=min_samples,
                ends_at=_ends(ends),
                auto_promote=auto_promote,
            )
            what = "medium routing" if test.kind == "route" else test.model_name
            arm_a, arm_b = (backend_a, backend_b) if test.kind == "route" else (model_a, model_b)
    except OnnxqError as exc:
        raise _fail(exc) from None
    typer.echo(f"A/B test {name} running: {100 - split}% of {what} jobs to {arm_a}, {split}% to {arm_b}")


@abtest_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every A/B test, newest first."""
    from workers.abtests import show_all

    tests = show_all()
    if as_json:
        sys.stdout.write("[" + ",".join(t.model_dump_json() for t in tests) + "]\n")
        return
    if not tests:
        out.print("No A/B tests; `onnxq abtest create` starts one.")
        return
    table = Table("name", "A", "B", "split to B", "metric", "status", "winner", "p-value")
    for t in tests:
        p = "-" if t.p_value is None else f"{t.p_value:.3g}"
        table.add_row(t.name, t.model_a, t.model_b, f"{t.split_percent}%", t.metric, t.status, t.winner or "-", p)
    out.print(table)


def print_test(test: ABTestView) -> None:
    """A test's per-arm figures side by side, then its one-line verdict."""
    table = Table("", "A", "B", title=f"A/B test {test.name} ({test.metric})")
    a, b = test.arms["A"], test.arms["B"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def cost(value: float | None) -> str:
        return "-" if value is None else f"{value:.6f}"

    # A routing job's time is its whole execution: every backend it tried.
    timed = "execution" if test.kind == "route" else "inference"
    table.add_row("traffic", f"{100 - test.split_percent}%", f"{test.split_percent}%")
    table.add_row("requests", str(a.requests), str(b.requests))
    table.add_row(f"mean {timed} ms", ms(a.mean_ms), ms(b.mean_ms))
    table.add_row(f"p95 {timed} ms", ms(a.p95_ms), ms(b.p95_ms))
    if test.kind == "route":
        table.add_row("mean cost", cost(a.mean_cost), cost(b.mean_cost))
        table.add_row("fallbacks", str(a.fallbacks), str(b.fallbacks))
        table.add_row("failed", str(a.failed), str(b.failed))
    else:
        table.add_row("labelled", str(a.labelled), str(b.labelled))
        table.add_row("accuracy", share(a.accuracy), share(b.accuracy))
    # The arms on lines of their own: a table column would cut a long NAME@VERSION short.
    out.print(f"A: {test.model_a}\nB: {test.model_b}", markup=False, highlight=False)
    out.print(table)
    out.print(test.verdict, markup=False)


@abtest_app.command("show")
def show(
    name: str = typer.Argument(..., help="The test's name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per-arm figures side by side, and a one-line verdict."""
    from workers.abtests import show_test

    try:
        test = show_test(name)
    except OnnxqError as exc:
        raise _fail(exc) from None
    if as_json:
        sys.stdout.write(test.model_dump_json() + "\n")
        return
    print_test(test)


@abtest_app.command("close")
def close(name: str = typer.Argument(..., help="The test's name.")) -> None:
    """Close a running test now: a winner only if the difference is significant."""
    from workers.abtests import close_test

    try:
        test = close_test(name)
    except OnnxqError as exc:
        raise _fail(exc) from None
    print_test(test)
