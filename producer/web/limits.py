"""Bounded request bodies for every route: a size cap and an idle timeout, enforced while the
body streams in, so neither a huge nor a trickling upload can pin the process's memory or
threads. Routes that take images apply their own, tighter limits on top.

Starlette's own body limit answers in plain text (not onnxq's error shape) and has no idle
timeout; hence this small middleware. It raises Starlette `HTTPException`s from `receive`
because FastAPI passes those through its body parsing untouched (anything else becomes a 400).
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.web.errors import http_error_response


class BodyLimit:
    """Pure ASGI middleware: 413 past `max_bytes`, 408 when the client stops sending."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await http_error_response(self._too_large())(scope, receive, send)
            return
        seen = 0
        body_done = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal seen, body_done
            if body_done:
                # After the body, receive() only waits for a disconnect: no timeout on that.
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"The request body stalled for over {self.idle_timeout_s:g} s.") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
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

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"The request body is over {self.max_bytes / 2**20:.0f} MiB.")
