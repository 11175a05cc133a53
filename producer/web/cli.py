"""`onnxq api` (the web process) and `onnxq keys` (its API keys)."""

from __future__ import annotations

import ipaddress
import socket

import typer
from rich.console import Console
from rich.table import Table

from onnxq.errors import OnnxqError
from onnxq.settings import get_settings

keys_app = typer.Typer(help="API keys of the web process: create (shown once), list, revoke.", no_args_is_help=True)
err = Console(stderr=True)


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def api(
    host: str | None = typer.Option(None, "--host", help="Address to bind (default ONNXQ_API_HOST, 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port to bind (default $PORT, 8000)."),
) -> None:
    """Run the HTTP API (uvicorn) on the producer's code."""
    import uvicorn

    settings = get_settings()
    host = host or settings.api_host
    if not settings.api_auth and not is_loopback(host):
        err.print(
            f"[red]refusing to serve {host} without API keys[/red]: ONNXQ_API_AUTH=false is allowed only on a "
            "loopback bind (127.0.0.1). Create keys with `onnxq keys create NAME` instead."
        )
        raise typer.Exit(2)
    uvicorn.run(
        "producer.web.app:create_app",
        factory=True,
        host=host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
    )


@keys_app.command("create")
def create(
    name: str = typer.Argument(..., help="Who the key is for (recorded on every job it submits)."),
    replace: bool = typer.Option(False, "--replace", help="Revoke the active key of this name first (rotation)."),
) -> None:
    """Create a key and print it once: only its hash is stored."""
    from producer.keys import create_key

    try:
        created = create_key(name, replace=replace)
    except OnnxqError as exc:
        err.print(f"[red]{exc.code}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    err.print(f"API key {created.name!r} created. It is shown only now; store it somewhere safe:")
    typer.echo(created.secret)


@keys_app.command("list")
def list_() -> None:
    """List keys (name, the first characters, created, revoked); never the keys themselves."""
    from producer.keys import list_keys

    table = Table("name", "key starts", "created", "revoked")
    for key in list_keys():
        table.add_row(
            key.name,
            key.prefix + "…",
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def revoke(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Revoke the active key of this name (within seconds on every web process)."""
    from producer.keys import revoke_key

    if not revoke_key(name):
        err.print(f"[red]no active key named {name!r}[/red]")
        raise typer.Exit(1)
    err.print(f"API key {name!r} revoked.")
