"""`onnxq route`: send a query through the hybrid router (or only ask where it would go)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from onnxq.errors import OnnxqError

err = Console(stderr=True)


def route(
    query: str = typer.Argument(
        ..., help="The query text, or - to read it from stdin (kept out of `ps` and shell history)."
    ),
    image: Path | None = typer.Option(None, "--image", help="An image for the local (ONNX) backend."),
    user: str | None = typer.Option(None, "--user", help="User id: keeps the medium-query A/B split sticky."),
    backend: str | None = typer.Option(None, "--backend", help="Force this backend of router.toml."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key", help="Same key (per user) → same job."),
    decide_only: bool = typer.Option(False, "--decide-only", help="Only print the decision: no job, no backend call."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the answer before printing."),
    timeout_s: float = typer.Option(300.0, "--timeout", help="Seconds to wait with --wait."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Classify a query and route it to a local or remote backend, as a job (`kind: route`)."""
    from producer.cli import human, read_image
    from producer.client import get_job, wait_for_jobs
    from producer.route import decide_route, submit_route

    if query == "-":
        query = sys.stdin.read().strip()
    try:
        if decide_only:
            decision = decide_route(query, user_id=user, backend=backend)
            sys.stdout.write((json.dumps(decision, ensure_ascii=False) if as_json else describe(decision)) + "\n")
            return
        data = read_image(image) if image is not None else None
        outcome, decision = submit_route(
            query, image=data, user_id=user, backend=backend, idempotency_key=idempotency_key
        )
        view = wait_for_jobs([outcome.job_id], timeout_s=timeout_s)[outcome.job_id] if wait else get_job(outcome.job_id)
    except OSError as exc:
        err.print(f"[red]cannot read {image}[/red]: {exc.strerror}")
        raise typer.Exit(1) from None
    except OnnxqError as exc:
        if as_json:
            sys.stdout.write(json.dumps({"job_id": None, "status": "refused", "error": exc.as_dict()}) + "\n")
        else:
            err.print(f"[red]{exc.code}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(view if wait else {**view, "decision": decision}, ensure_ascii=False) + "\n")
    else:
        typer.echo(describe(decision))
        typer.echo(human(view))
    if view["status"] == "failed":
        raise typer.Exit(1)


def describe(decision: dict[str, Any]) -> str:
    """A decision in a few human lines."""
    c = decision["classification"]
    variant = f", variant {decision['variant']}" if decision["variant"] else ""
    lines = [
        f"{c['complexity']} (score {c['score']}) → {decision['backend']} "
        f"[{decision['tier']}, {decision['reason']}{variant}], estimated cost {decision['estimated_cost']:g}"
    ]
    for rule in c["rules"]:
        matched = f": {', '.join(rule['matched'])}" if rule["matched"] else ""
        lines.append(f"  +{rule['points']} {rule['rule']}{matched}")
    return "\n".join(lines)


router_app = typer.Typer(help="The hybrid router's configuration.", no_args_is_help=True)


@router_app.command("calibrate")
def calibrate(
    remote_share: float = typer.Option(..., "--remote-share", help="Wanted share of queries on the remote tier, 0-1."),
    since: str | None = typer.Option(None, "--since", help="Calibrate on jobs since (YYYY-MM-DD); default 30 days."),
    apply: bool = typer.Option(False, "--apply", help="Write the thresholds to router.toml."),
) -> None:
    """Choose the medium/complex thresholds that would have sent `--remote-share` of recent
    queries to the remote tier; show the change; write it only with --apply."""
    from datetime import UTC, datetime, timedelta

    from sqlmodel import Session

    from onnxq.settings import get_settings
    from producer.reports import parse_since
    from schema.db import get_engine
    from schema.routes import recent_scores
    from workers.routing.calibrate import calibrate as choose
    from workers.routing.calibrate import write_thresholds
    from workers.routing.config import get_router_config

    try:
        start = parse_since(since) or datetime.now(UTC) - timedelta(days=30)
        config = get_router_config()
    except OnnxqError as exc:
        err.print(f"[red]{exc.code}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    with Session(get_engine()) as session:
        scores = recent_scores(session, start)
    try:
        result = choose(scores, config, remote_share)
    except ValueError as exc:
        err.print(f"[red]cannot calibrate[/red]: {exc}")
        raise typer.Exit(1) from None
    (m0, c0), (m1, c1) = result.current, result.proposed
    typer.echo(f"{result.samples} routed queries since {start:%Y-%m-%d}; wanted remote share {remote_share:.0%}")
    typer.echo(f"  now:      medium_at = {m0}, complex_at = {c0} → remote share {result.current_share:.1%}")
    typer.echo(f"  proposed: medium_at = {m1}, complex_at = {c1} → remote share {result.proposed_share:.1%}")
    if not apply:
        typer.echo("  (not written: add --apply)")
        return
    path = get_settings().router_config
    write_thresholds(path, m1, c1)
    typer.echo(f"  written to {path}; web and worker processes pick it up on their next query")
