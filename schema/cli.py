"""`onnxq db …` and `onnxq audit …`: migrations and the audit chain check."""

from __future__ import annotations

import typer
from rich.console import Console
from sqlmodel import Session

from onnxq.settings import get_settings
from schema import migrate
from schema.audit import verify_chain
from schema.db import get_engine

db_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
err = Console(stderr=True)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the database up (harmless when already up to date)."""
    migrate.upgrade(revision)
    typer.echo(f"database at {migrate.current_revision()} ({get_settings().database_url.split('://')[0]})")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument("-1", help="Target revision, -1 for one step, base for none."),
) -> None:
    """Migrate the database down."""
    migrate.downgrade(revision)
    typer.echo(f"database at {migrate.current_revision() or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's revision and the newest one available."""
    current, head = migrate.current_revision(), migrate.head_revision()
    typer.echo(f"current: {current or 'base (empty)'}  head: {head}")
    if current != head:
        err.print("[yellow]the database is not up to date: run `onnxq db upgrade`[/yellow]")


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the audit chain; exit 1 naming the first edited, deleted or reordered row."""
    with Session(get_engine()) as session:
        report = verify_chain(session, get_settings().audit_key_bytes())
    if report.problem is None:
        typer.echo(f"audit chain OK: {report.rows_checked} rows verified")
        return
    err.print(
        f"[red]audit chain BROKEN at row {report.problem.row_id}:[/red] {report.problem.reason} "
        f"({report.rows_checked} rows before it verified)"
    )
    raise typer.Exit(1)
