"""Bounded request bodies for every route: a size cap per path, an idle timeout and an overall
deadline, enforced while the body streams in and before any route (or its authentication) sees
it, so neither a huge nor a trickling upload can pin the process's memory or connections.

Starlette's own body limit answers in plain text (not onnxq's error shape) and has no timeouts;
hence this small middleware. It raises Starlette `HTTPException`s from `receive` because FastAPI
passes those through its body parsing untouched (anything else becomes a 400).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.web.errors import http_error_response


class BodyLimit:
    """Pure ASGI middleware: 413 past the path's byte limit, 408 when the client stops sending
    for `idle_timeout_s` or has not finished after `total_timeout_s`."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Mapping[str, int],
        default_bytes: int,
        idle_timeout_s: float,
        total_timeout_s: float,
    ) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default_bytes = default_bytes
        self.idle_timeout_s = idle_timeout_s
        self.total_timeout_s = total_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limits.get(scope["path"], self.default_bytes)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_bytes:
            await http_error_response(_too_large(max_bytes))(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout_s
        seen = 0
        body_done = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal seen, body_done
            if body_done:
                # After the body, receive() only waits for a disconnect: no timeout on that.
                return await receive()
            wait_s = min(self.idle_timeout_s, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait_s, 0))
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"The request body did not arrive in time (idle over {self.idle_timeout_s:g} s, "
                    f"or not whole after {self.total_timeout_s:g} s).",
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise _too_large(max_bytes)
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except HTTPException as exc:
            # Raised past the app's handlers (e.g. while a middleware read the body).
            if started or exc.status_code not in (408, 413):
                raise
            await http_error_response(exc)(scope, receive, send)


def _too_large(max_bytes: int) -> HTTPException:
    size = f"{max_bytes / 2**20:.0f} MiB" if max_bytes >= 2**20 else f"{max_bytes // 1024} KiB"
    return HTTPException(413, f"The request body is over {size} for this route.")
