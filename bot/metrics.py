"""Prometheus metrics, served at ``/metrics`` by :mod:`bot.web`.

Each :class:`Metrics` has its own registry, so several apps in one process (tests, or a
bench) never see each other's numbers. Counters about events are updated as the
dispatcher handles them; the numbers that live in the database (deliveries, the
broadcast queue, late scheduled work) are read by one light query batch at scrape time,
at most once per :data:`REFRESH_SECONDS`, never per update.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.clock import Clock
from bot.db.models import Delivery, DeliveryStatus, DueJob, JobStatus
from bot.messenger import ButtonPress, Event, PollAnswer, TextMessage, UnsupportedMessage
from bot.routing import FAILED

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Scrapes every few seconds (or several Prometheus servers) still cost one query batch
# per this many seconds.
REFRESH_SECONDS = 15.0
# Handling an event is a transaction plus one or two Bot API calls: milliseconds to
# seconds; anything beyond 10 s is a stall whatever its exact length.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_EVENT_NAMES: dict[type, str] = {
    TextMessage: "text",
    ButtonPress: "button",
    UnsupportedMessage: "unsupported",
    PollAnswer: "poll_answer",
}
# Deliveries still to go out: the broadcast queue.
_QUEUED = (DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value)
# Scheduled work that is due and not finished yet.
_UNFINISHED = (JobStatus.PENDING.value, JobStatus.RUNNING.value)


def event_name(event: Event) -> str:
    return _EVENT_NAMES.get(type(event), "other")


class Metrics:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Clock,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._clock = clock
        self._refresh_seconds = refresh_seconds
        self._refreshed_at: float | None = None
        self._refreshing = asyncio.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.updates = Counter(
            "zhibu_updates_handled",
            "Events handled, by event type and outcome "
            "(handled, failed, duplicate: a redelivered update ignored, group: turned away).",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.update_seconds = Histogram(
            "zhibu_update_duration_seconds",
            "Time from receiving an event to having committed and replied, by event type.",
            ["event"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.handler_errors = Counter(
            "zhibu_handler_errors",
            "Events whose handler raised (rolled back; the person was asked to try again).",
            ["event"],
            registry=self.registry,
        )
        self.deliveries = Gauge(
            "zhibu_deliveries",
            "Broadcast deliveries in the database, by status.",
            ["status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "zhibu_broadcast_queue_depth",
            "Deliveries waiting to be sent or being sent (pending + sending).",
            registry=self.registry,
        )
        self.due_lag = Gauge(
            "zhibu_due_work_lag_seconds",
            "Seconds since the oldest scheduled job that is due and not done came due; "
            "0 when nothing is late.",
            registry=self.registry,
        )
        self.refresh_failures = Counter(
            "zhibu_metrics_refresh_failures",
            "Failed reads of the database-derived metrics (their last values are kept).",
            registry=self.registry,
        )

    # --- per event ------------------------------------------------------------------

    def observe(self, event: Event, outcome: str, seconds: float) -> None:
        """The dispatcher's observer: one call per event, however it went."""
        name = event_name(event)
        self.updates.labels(name, outcome).inc()
        self.update_seconds.labels(name).observe(seconds)
        if outcome == FAILED:
            self.handler_errors.labels(name).inc()

    # --- from the database ----------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read the database-derived gauges unless they are fresh enough."""
        async with self._refreshing:
            started = time.monotonic()
            if (
                not force
                and self._refreshed_at is not None
                and started - self._refreshed_at < self._refresh_seconds
            ):
                return
            try:
                async with self._sessionmaker() as session:
                    await self._read(session, self._clock.now())
            except Exception:
                # A scrape must still answer: the counters are valid without the
                # database, and /healthz is what reports the database itself.
                log.warning("could not refresh database metrics", exc_info=True)
                self.refresh_failures.inc()
                return
            self._refreshed_at = started

    async def _read(self, session: AsyncSession, now: datetime) -> None:
        rows = await session.execute(
            select(Delivery.status, func.count()).group_by(Delivery.status)
        )
        counts: dict[str, int] = {status: number for status, number in rows}
        for status in DeliveryStatus:
            self.deliveries.labels(status.value).set(counts.get(status.value, 0))
        self.queue_depth.set(sum(counts.get(status, 0) for status in _QUEUED))
        oldest = await session.scalar(
            select(func.min(DueJob.run_at)).where(
                DueJob.status.in_(_UNFINISHED), DueJob.run_at <= now
            )
        )
        self.due_lag.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)

    async def render(self) -> bytes:
        """The Prometheus text exposition, with the database numbers refreshed if due."""
        await self.refresh()
        return generate_latest(self.registry)
