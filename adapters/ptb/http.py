"""The HTTP client the bot's Bot API calls go through: PTB's own (httpx), with one fix.

httpcore 1.0's connection pool hands an idle HTTP/1.1 connection to a request and only
marks it busy once that request has started on it, a few event-loop iterations later.
Every request that starts in between is handed the same connection, finds it taken and
goes round the pool again (``ConnectionNotAvailable``, retried inside httpcore; the
upstream issue is encode/httpcore#1110). A broadcast's send workers often start together
(a claimed batch wakes all of them at once, or their answers arrive in one read of the
sockets), and then most requests went round twice: measured, 0.9 retries per message
and about 0.3 ms of CPU each at full speed, a fifth of the whole send.

:class:`_OneRequestPerConnectionPool` gives an idle connection to one waiting request
at a time and otherwise keeps httpcore's rules. Everything else (timeouts, limits, the
separate ``getUpdates`` client) is what ``ApplicationBuilder`` builds by default.
"""

from __future__ import annotations

import httpcore
import httpx
from telegram.request import HTTPXRequest

__all__ = ["CONNECTION_POOL_SIZE", "bot_request"]

# PTB's default for the bot's (not getUpdates') requests.
CONNECTION_POOL_SIZE = 256


class _OneRequestPerConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, except that an idle connection already handed to a request that
    has not started on it yet is neither handed to another request nor closed.

    HTTP/1.1 only (one request per connection at a time), as the bot's client is.
    """

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        # The same steps as httpcore 1.0.9's, in the same order; the difference is
        # ``spoken_for``.
        spoken_for = {
            request.connection
            for request in self._requests
            if request.connection is not None and request.connection.is_idle()
        }
        closing: list[httpcore.AsyncConnectionInterface] = []
        for connection in list(self._connections):
            if connection.is_closed():
                self._connections.remove(connection)
            elif connection.has_expired():
                # Its request (if any) finds it closed and goes round again, as before.
                self._connections.remove(connection)
                closing.append(connection)
            elif (
                connection.is_idle()
                and connection not in spoken_for
                and sum(1 for c in self._connections if c.is_idle())
                > self._max_keepalive_connections
            ):
                self._connections.remove(connection)
                closing.append(connection)

        for request in [r for r in self._requests if r.is_queued()]:
            origin = request.request.url.origin
            free = [
                c
                for c in self._connections
                if c not in spoken_for and c.can_handle_request(origin) and c.is_available()
            ]
            if free:
                connection = free[0]
            elif len(self._connections) < self._max_connections:
                connection = self.create_connection(origin)
                self._connections.append(connection)
            else:
                idle = [c for c in self._connections if c.is_idle() and c not in spoken_for]
                if not idle:
                    continue  # stays queued until a connection is released
                self._connections.remove(idle[0])
                closing.append(idle[0])
                connection = self.create_connection(origin)
                self._connections.append(connection)
            request.assign_to_connection(connection)
            spoken_for.add(connection)
        return closing


class _Transport(httpx.AsyncHTTPTransport):
    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, http1=True, http2=False)
        # httpx builds the pool from its own settings (TLS context, limits); only the
        # class changes: the subclass adds no state, just the assignment rule above.
        if type(self._pool) is httpcore.AsyncConnectionPool:
            self._pool.__class__ = _OneRequestPerConnectionPool


def bot_request() -> HTTPXRequest:
    """The request object for the bot's API calls (``ApplicationBuilder.request``):
    PTB's defaults, with the connection pool above. A new one for every Application: a
    shut-down client closes its transport."""
    return HTTPXRequest(
        connection_pool_size=CONNECTION_POOL_SIZE,
        httpx_kwargs={"transport": _Transport(httpx.Limits(max_connections=CONNECTION_POOL_SIZE))},
    )
