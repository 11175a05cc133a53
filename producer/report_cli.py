"""`onnxq report costs`: what the router saved, from the jobs that ran."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from onnxq.errors import OnnxqError

report_app = typer.Typer(help="Reports over what ran.", no_args_is_help=True)


@report_app.command("costs")
def costs(
    since: str | None = typer.Option(None, "--since", help="Only jobs finished since (YYYY-MM-DD, UTC)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Requests and cost per backend, against sending every query to the remote tier."""
    from producer.reports import cost_report, parse_since

    try:
        start = parse_since(since)
    except OnnxqError as exc:
        raise typer.BadParameter(exc.message, param_hint="--since") from None
    report = cost_report(start)
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    out = Console()
    table = Table("served by", "tier", "requests", "fallbacks", "cost", "all-remote cost")
    for row in report["by_backend"]:
        table.add_row(
            row["backend"] or "(no backend)",
            row["tier"] or "",
            str(row["requests"]),
            str(row["fallbacks"]),
            f"{row['cost']:.4f}",
            f"{row['all_remote_cost']:.4f}",
        )
    out.print(table)
    out.print(
        f"{report['requests']} requests over {report['days']} day(s): cost {report['cost']:.4f}, "
        f"all-remote {report['all_remote_cost']:.4f}, saved {report['savings']:.4f} ({report['savings_percent']:.1f}%)"
    )
    projection = report["projection"]
    for period in ("daily", "monthly", "yearly"):
        p = projection[period]
        out.print(
            f"  {period:>7}: {p['requests']:.0f} requests, cost {p['cost']:.2f} vs all-remote "
            f"{p['all_remote_cost']:.2f}, saving {p['savings']:.2f}"
        )
