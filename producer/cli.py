"""`onnxq submit` and `onnxq status`: the producer's command-line verbs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from onnxq.errors import InputTooLarge, OnnxqError
from onnxq.settings import get_settings
from producer.client import JOB_ID_LENGTH, get_job, match_job_prefix, submit_inference, wait_for_jobs

PROGRESS_MIN_FILES = 5
err = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )


def read_image(path: Path) -> bytes:
    """The file's bytes; an oversized file is refused from its size, without reading it."""
    limit = get_settings().max_image_bytes
    size = path.stat().st_size
    if size > limit:
        raise InputTooLarge(f"The file is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB.")
    return path.read_bytes()


def human(view: dict[str, Any]) -> str:
    """A job on one line: id, status, then its result or error."""
    parts = [view["job_id"] or "-", view["status"]]
    result = view.get("result")
    if result and view.get("kind") == "route":
        fallback = f" (fallback from {result['decision']['backend']})" if result["fallback_used"] else ""
        parts.append(f"{result['served_by']}{fallback}: {result['answer']}  cost {result['cost']:g}")
    elif result:
        parts.append(f"{result['prediction']} {result['confidence']:.2%} (batch {result['batch_size']})")
    if view.get("error"):
        parts.append(f"{view['error']['code']}: {view['error']['message']}")
    return "  ".join(parts)


def _emit(file: str, view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"file": file, **view}) + "\n")
    else:
        sys.stdout.write(f"{file}  {human(view)}\n")
    sys.stdout.flush()


def submit(
    files: list[Path] = typer.Argument(..., exists=False, help="Image files to classify."),
    model: str = typer.Option(..., "--model", "-m", help="NAME or NAME@VERSION."),
    user: str | None = typer.Option(None, "--user", help="The user the jobs belong to."),
    idempotency_key: str | None = typer.Option(
        None,
        "--idempotency-key",
        help="Same key (per user) → same job. With several files, FILE is appended.",
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for the results before printing."),
    timeout_s: float = typer.Option(300.0, "--timeout", help="Seconds to wait with --wait."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Submit inference jobs: one line per file. Exit status 1 if any file was refused (or, with
    --wait, any job failed)."""
    # One line per file, in argument order: without --wait each is printed as it is submitted;
    # with --wait all are printed once the accepted jobs have ended.
    lines: list[tuple[str, dict[str, Any]]] = []
    show_bar = len(files) >= PROGRESS_MIN_FILES
    with _progress() as progress:
        task = progress.add_task("submitting", total=len(files), visible=show_bar)
        for path in files:
            name = str(path)
            try:
                key = idempotency_key if idempotency_key is None or len(files) == 1 else f"{idempotency_key}:{name}"
                outcome = submit_inference(read_image(path), model, user_id=user, idempotency_key=key)
                view: dict[str, Any] = {"job_id": outcome.job_id, "status": outcome.status}
            except (OnnxqError, OSError) as exc:
                error = (
                    exc.as_dict() if isinstance(exc, OnnxqError) else {"code": "file_unreadable", "message": str(exc)}
                )
                view = {"job_id": None, "status": "refused", "error": error}
            lines.append((name, view))
            if not wait:
                _emit(name, view, as_json)
            progress.advance(task)
        if wait:
            job_ids = [view["job_id"] for _, view in lines if view["job_id"]]
            views = _wait_with_progress(progress, job_ids, timeout_s, show_bar) if job_ids else {}
            lines = [(name, views.get(view["job_id"], view)) for name, view in lines]
            for name, view in lines:
                _emit(name, view, as_json)
    if any(view["status"] in ("refused", "failed") for _, view in lines):
        raise typer.Exit(1)


def _wait_with_progress(progress: Progress, job_ids: list[str], timeout_s: float, show_bar: bool) -> dict[str, Any]:
    task = progress.add_task("waiting", total=len(job_ids), visible=show_bar)
    return wait_for_jobs(job_ids, timeout_s=timeout_s, on_poll=lambda done: progress.update(task, completed=done))


def status(
    job_id: str = typer.Argument(..., help="The job id `submit` printed (or its first 8+ characters)."),
    as_json: bool = typer.Option(False, "--json", help="Print the job as JSON."),
) -> None:
    """Print one job."""
    try:
        view = get_job(job_id if len(job_id) == JOB_ID_LENGTH else match_job_prefix(job_id))
    except OnnxqError as exc:
        if as_json:
            sys.stdout.write(json.dumps({"job_id": job_id, "error": exc.as_dict()}) + "\n")
        else:
            err.print(f"[red]{exc.code}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2) + "\n")
        return
    typer.echo(human(view))
    for key in ("created_at", "started_at", "finished_at"):
        typer.echo(f"  {key}: {view[key]}")
    if view["result"]:
        for label, p in view["result"]["probabilities"].items():
            typer.echo(f"  {label}: {p:.4f}")
        typer.echo(f"  timings_ms: {view['result']['timings_ms']}")
