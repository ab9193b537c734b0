"""The one place that builds and wires everything. Nothing is built at import time."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.broadcast import BroadcastSender
from bot.clock import Clock, SystemClock
from bot.config import ConfigError, Settings
from bot.content import admin_branch_id, load_pack, sync_pack
from bot.context import OrgInfo, Services
from bot.db.engine import create_engine, create_read_engine, create_sessionmaker
from bot.db.models import Role
from bot.features import (
    deliveries,
    housekeeping,
    join,
    notices,
    nudges,
    oath,
    profile,
    quizzes,
    roster,
    stats,
    study,
)
from bot.i18n import LANGUAGES, translator
from bot.materials import load_materials, store_materials
from bot.messenger import Messenger, WebhookReceiver
from bot.metrics import Metrics
from bot.oaths import load_oath_pack, plan_campaigns, store_oath_texts
from bot.paced import PacedMessenger
from bot.quizbank import load_pack_banks, store_bank
from bot.routing import Dispatcher, Router
from bot.scheduler import Scheduler
from bot.send_budget import Budget, budget_for

if TYPE_CHECKING:
    from bot.web import WebServer

log = logging.getLogger(__name__)

# Adapters are found by name so that the core never imports a messenger library.
ADAPTER_MODULES = {
    "ptb": "adapters.ptb",
    "aiogram": "adapters.aiogram",
    "console": "adapters.console",
}


def freeze_start_up_objects() -> None:
    """Exempt everything alive now from the cyclic garbage collector; for a process that
    has just started its bot and runs it until it stops (``zhibu run``).

    Start-up leaves a large heap that stays until exit: modules, the ORM's mappers, the
    content pack, python-telegram-bot. Every full collection walks all of it, and a
    broadcast makes full collections frequent (its claimed rows and messages live long
    enough to be promoted to the oldest generation): measured, about 80 ms each, three
    during 3,000 messages at full speed, 0.08 ms of CPU a message. Frozen, a full
    collection walks only what was made since. Anything alive now that later becomes
    cyclic garbage is never collected, so garbage already made is collected first.
    """
    gc.collect()
    gc.freeze()


def build_router() -> Router:
    root = Router()
    for feature in (
        profile.router,
        join.router,
        roster.router,
        notices.router,
        quizzes.router,
        study.router,
        oath.router,
        nudges.router,
        deliveries.router,
        stats.router,
        housekeeping.router,
    ):
        root.include(feature)
    return root


def create_messenger(settings: Settings, *, on_close: Callable[[], None]) -> Messenger:
    """Build the configured adapter; ``on_close`` is called if it stops by itself."""
    module = importlib.import_module(ADAPTER_MODULES[settings.resolved_adapter()])
    messenger: Messenger = module.create(settings, on_close=on_close)
    return messenger


class App:
    def __init__(
        self,
        settings: Settings,
        messenger: Messenger,
        *,
        clock: Clock | None = None,
        engine: AsyncEngine | None = None,
    ) -> None:
        self.settings = settings
        self.messenger = messenger
        self.clock: Clock = clock or SystemClock()
        self._own_engine = engine is None
        self.engine = engine or create_engine(settings.database.url, echo=settings.database.echo)
        self.sessionmaker = create_sessionmaker(self.engine)
        self.read_engine = create_read_engine(settings.database.url) if self._own_engine else None
        self.read_sessionmaker = create_sessionmaker(self.read_engine) if self.read_engine else None
        self.router = build_router()
        self.dispatcher: Dispatcher | None = None
        self.sender: BroadcastSender | None = None
        self.scheduler: Scheduler | None = None
        # The bot's send budget, shared by the broadcast sender and the replies.
        self.budget: Budget | None = None
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.metrics = Metrics(self.sessionmaker, self.clock)
        self.web: WebServer | None = None

    async def prepare(self) -> Dispatcher:
        """Load the content pack into the database and build the dispatcher."""
        pack = load_pack(self.settings.content_path)
        if self.settings.charts.font_path is not None:
            # Imported only here: matplotlib is heavy, and most installs keep the
            # bundled font.
            from bot.stats import chart

            chart.configure(self.settings.charts.font_path)
        # Validate every bank before touching the database: a bad file stops start-up
        # with its path and field, and nothing is half-loaded.
        banks, quiz_specs = load_pack_banks(self.settings.content_path)
        oath_pack = load_oath_pack(self.settings.content_path)
        materials = load_materials(self.settings.content_path)
        async with self.sessionmaker.begin() as session:
            now = self.clock.now()
            org = await sync_pack(session, pack, now)
            home = await admin_branch_id(session, pack, org)
            info = OrgInfo(org.id, org.code, org.name, org.name_en, org.timezone, home)
            for bank in banks:
                await store_bank(session, org.id, bank, now)
            await store_oath_texts(session, org.id, oath_pack.oaths)
            await store_materials(session, org.id, materials, now)
        capabilities = self.messenger.capabilities
        services = Services(
            settings=self.settings,
            platform=self.messenger.platform,
            capabilities=capabilities,
            org=info,
            router=self.router,
            invite_link=self.messenger.invite_link,
            clock=self.clock,
            quiz_definitions={spec.code: spec for spec in quiz_specs},
            points=pack.spec.points.resolved(),
        )
        # Stay a little under the platform's limits: its counting window and ours never
        # line up exactly, and a 429 costs far more than the few percent kept back.
        # On PostgreSQL every process of this bot shares one budget: Telegram's limits
        # are per bot, not per process. Replies and broadcasts share it too (replies
        # first): the platform counts every message the bot sends.
        rate = self.settings.send_rate or capabilities.send_rate
        per_chat = self.settings.send_rate_per_chat or capabilities.per_chat_rate
        budget = budget_for(self.engine, self.messenger.platform, rate * 0.96, per_chat)
        self.budget = budget
        self.sender = BroadcastSender(
            self.sessionmaker,
            self.messenger,
            services,
            self.router.renderers,
            budget,
            worker_id=self.worker_id,
            read_sessionmaker=self.read_sessionmaker,
        )
        services.wake_sender = self.sender.wake
        self.scheduler = Scheduler(
            self.sessionmaker, services, self.router.jobs, worker_id=self.worker_id
        )
        async with self.sessionmaker.begin() as session:
            # Idempotent: the next opening of every calendar rule, and today's birthdays.
            await plan_campaigns(session, services, self.clock.now())
            await study.plan_publications(session, services, self.clock.now())
            if self.settings.webhook.enabled:
                # Only webhooks record update ids; the prune job reschedules itself daily.
                await housekeeping.plan_pruning(session, self.clock.now())
        self.dispatcher = Dispatcher(
            self.router,
            services,
            self.sessionmaker,
            PacedMessenger(self.messenger, budget),
            self.read_sessionmaker,
            observe=self.metrics.observe,
        )
        # Should a reply be refused for the bot's rate all the same (another bot on the
        # same token, a platform stricter than declared), the broadcasts pause too, in
        # every process with the shared budget: the bot as a whole is over the limit.
        self.dispatcher.on_rate_limited = budget.pause
        return self.dispatcher

    async def start(self, *, background: bool = True) -> None:
        """Connect and run. ``background=False`` leaves the broadcast sender and the
        scheduler's clock off, for tests that drive them step by step."""
        dispatcher = self.dispatcher or await self.prepare()
        await self.messenger.start(dispatcher.handle)
        try:
            await self._serve()
        except BaseException:
            await self.messenger.stop()
            raise
        await self._default_menus(dispatcher)
        if background:
            assert self.sender is not None and self.scheduler is not None
            self.sender.start()
            self.scheduler.start(self.settings.scheduler_tick_seconds)
        log.info("Zhibu is running on %s", self.messenger.platform)

    async def _serve(self) -> None:
        """Start the HTTP server: the webhook in webhook mode, and /healthz and /metrics
        then or when asked for while polling."""
        webhook = self.settings.webhook
        if not webhook.enabled and not webhook.serve_when_polling:
            return
        receiver: WebhookReceiver | None = None
        secret: str | None = None
        if webhook.enabled:
            if not isinstance(self.messenger, WebhookReceiver):
                raise ConfigError(
                    f"ZHIBU_WEBHOOK__URL: the {self.messenger.platform} adapter cannot "
                    "receive webhooks"
                )
            if webhook.secret_token is None:
                raise ConfigError("ZHIBU_WEBHOOK__SECRET_TOKEN: required in webhook mode")
            receiver, secret = self.messenger, webhook.secret_token.get_secret_value()
        # Imported here so that importing the core loads no HTTP library.
        from bot.web import WebServer

        self.web = WebServer(
            host=webhook.listen_host,
            port=webhook.listen_port,
            engine=self.engine,
            metrics=self.metrics,
            receiver=receiver,
            path=webhook.path,
            secret_token=secret,
        )
        await self.web.start()

    async def _default_menus(self, dispatcher: Dispatcher) -> None:
        if not self.messenger.capabilities.command_menu:
            return
        default = self.settings.default_language
        tz = dispatcher.services.org.timezone
        for lang in LANGUAGES:
            menu = self.router.menu(Role.MEMBER, translator(lang, tz))
            language = None if lang == default else lang.split("_")[0]
            await self.messenger.set_commands(menu, language=language)

    async def stop(self) -> None:
        if self.web is not None:
            # First: no new updates, and the ones in flight finish while the messenger
            # can still reply and the sender can still be woken.
            await self.web.stop()
            self.web = None
        if self.dispatcher is not None:
            # Exports already started finish while the messenger can still send them.
            await self.dispatcher.drain_background()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.sender is not None:
            await self.sender.stop()
        await self.messenger.stop()
        if self._own_engine:
            await self.engine.dispose()
        if self.read_engine is not None:
            await self.read_engine.dispose()
