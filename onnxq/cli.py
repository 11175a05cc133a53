"""The `onnxq` command: every process and verb of onnxq behind one entry point."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from onnxq.bench import bench
from onnxq.demo import demo, up
from onnxq.logs import configure as configure_logging
from onnxq.settings import get_settings
from producer.abtest_cli import abtest_app
from producer.cli import status, submit
from producer.metrics_cli import metrics_app
from producer.report_cli import report_app
from producer.route_cli import route, router_app
from producer.web.cli import api, keys_app
from scheduler.cli import scheduler
from schema.cli import audit_app, db_app
from workers.cli import models_app, worker

app = typer.Typer(
    help="onnxq: queue-driven batch workers for ONNX inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    try:
        get_settings()
    except ValidationError as exc:
        # Settings errors are the user's to fix: one sentence each, no traceback.
        for error in exc.errors():
            typer.echo(f"onnxq: configuration error: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None
    configure_logging()


app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(report_app, name="report")
app.add_typer(router_app, name="router")
app.add_typer(metrics_app, name="metrics")
app.add_typer(abtest_app, name="abtest")
app.command("submit")(submit)
app.command("status")(status)
app.command("route")(route)
app.command("worker")(worker)
app.command("scheduler")(scheduler)
app.command("up")(up)
app.command("demo")(demo)
app.command("bench")(bench)
app.command("api")(api)
