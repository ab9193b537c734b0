"""The bot's own small HTTP server: the webhook, ``/healthz`` and ``/metrics``.

aiohttp serves HTTP here and is not a messenger library: the webhook route checks the
secret and the JSON, then hands the decoded update to the adapter
(:class:`bot.messenger.WebhookReceiver`), which reads it with its own library. The
answer is sent only once the update has been handled, so that a worker that dies half
way answers nothing and Telegram delivers the update again (to this or another worker);
redeliveries of an update that was handled are recognised by the dispatcher (see
:mod:`bot.handled_updates`).

This module is imported only when the server runs, so importing the core loads no
HTTP library.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.messenger import WebhookReceiver
from bot.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# How long /healthz waits for the database before calling it unreachable; load balancers
# give up after a few seconds anyway.
HEALTH_TIMEOUT = 3.0
# Longest a stop waits for updates in flight. Telegram itself waits about a minute for
# an answer; a handler still busy after this long is stuck, and its update is delivered
# again (to another worker) because it was never answered.
SHUTDOWN_TIMEOUT = 30.0


class WebServer:
    """Serves ``/healthz`` and ``/metrics`` and, given a ``receiver``, the webhook."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        engine: AsyncEngine,
        metrics: Metrics,
        receiver: WebhookReceiver | None = None,
        path: str = "/telegram",
        secret_token: str | None = None,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    ) -> None:
        if receiver is not None and not secret_token:
            raise ValueError("a webhook needs a secret token")
        self._host = host
        self._port = port
        self._engine = engine
        self._metrics = metrics
        self._receiver = receiver
        self._path = path
        self._secret = (secret_token or "").encode()
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.port: int | None = None

    @property
    def in_flight(self) -> int:
        """Webhook updates being handled right now."""
        return len(self._in_flight)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def url(self) -> str:
        """``http://host:port`` as bound (port 0 in the settings picks a free one)."""
        if self.port is None:
            raise RuntimeError("the web server is not started")
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the web server is already started")
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics_page)
        if self._receiver is not None:
            app.router.add_post(self._path, self._webhook)
        # The access log would record every update; a proxy in front keeps one anyway.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._closing = False
        self.port = runner.addresses[0][1]
        log.info("listening on %s", self.url)

    async def stop(self) -> None:
        """Stop taking updates, then let the ones in flight finish (up to the timeout)."""
        runner = self._runner
        if runner is None:
            return
        # From here a request on a connection that is still open gets 503, and Telegram
        # delivers it again later, to a worker that is up.
        self._closing = True
        for site in list(runner.sites):
            await site.stop()  # no new connections
        if self._in_flight:
            log.info("waiting for %d webhook updates in flight", len(self._in_flight))
            try:
                async with asyncio.timeout(self._shutdown_timeout):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("%d webhook updates still in flight at stop", len(self._in_flight))
        await runner.cleanup()
        self._runner = None

    # --- routes ---------------------------------------------------------------------

    async def _webhook(self, request: web.Request) -> web.Response:
        assert self._receiver is not None
        given = request.headers.get(SECRET_HEADER, "").encode()
        # Constant time, so the secret cannot be guessed a character at a time.
        if not hmac.compare_digest(given, self._secret):
            return _json(401, {"ok": False, "error": "wrong or missing secret token"})
        if self._closing:
            return _json(503, {"ok": False, "error": "shutting down"}, retry_after="5")
        try:
            update = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _json(400, {"ok": False, "error": "the body is not JSON"})
        if not isinstance(update, dict):
            return _json(400, {"ok": False, "error": "the body is not a JSON object"})
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._idle.clear()
        try:
            await self._receiver.feed_update(update)
        except ValueError as exc:
            # Retrying a body the library cannot read would fail the same way forever.
            log.warning("refused a webhook update: %s", exc)
            return _json(400, {"ok": False, "error": "not an update"})
        finally:
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()
        return _json(200, {"ok": True})

    async def _health(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                async with self._engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:
            # The reason goes to the log, not to whoever asks.
            log.warning("health check: database unreachable: %s", exc)
            return _json(503, {"status": "unavailable", "database": "unreachable"})
        return _json(
            200,
            {"status": "stopping" if self._closing else "ok", "database": "ok"},
        )

    async def _metrics_page(self, request: web.Request) -> web.Response:
        body = await self._metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE
        return response


def _json(status: int, body: dict[str, Any], *, retry_after: str | None = None) -> web.Response:
    response = web.json_response(body, status=status)
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response
