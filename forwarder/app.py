"""The composition root: the only place that reads Settings and picks concrete parts.

``Daemon.run`` opens the store and an HTTP session, builds one dispatcher per provider,
serves the ingest API and the health side port, and owns every task in one
``asyncio.TaskGroup``. Shutdown (``stop`` set, e.g. by SIGTERM): ingest answers 503,
dispatchers start no new call, calls in flight get ``shutdown_grace_s`` to finish,
then the rest is cancelled; everything unsent stays in the store.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from forwarder import __version__
from forwarder.clock import Clock, SystemClock
from forwarder.config import (
    IngestSettings,
    ListenAddress,
    MetricsSettings,
    ProviderSettings,
    Settings,
    parse_listen,
    read_tokens_file,
    resolve_path,
)
from forwarder.dispatcher import Dispatcher
from forwarder.errors import ConfigError, StoreError
from forwarder.ingest import IngestApi
from forwarder.okta.dpop import DPoP
from forwarder.okta.events import RiskEventsSender
from forwarder.okta.keys import KeyFileError, SigningKey, load_signing_key
from forwarder.okta.tokens import TokenSource
from forwarder.ratelimit import CallBudget, CallLog
from forwarder.serving import ConnectionLimits, serve
from forwarder.signals import RiskLevel, format_ms
from forwarder.store import StoreBackend, open_store
from forwarder.telemetry import BudgetView, Metrics, drain_estimate_s, health_app

__all__ = ["Daemon", "app_key", "run_until_signalled"]


def app_key(p: ProviderSettings) -> str:
    """Whose budget a provider's calls spend: the Okta app (org + client id), not its name."""
    return f"{p.org_url}|{p.client_id}"


def store_where(store: object) -> str:
    """What to show of the store in logs (a DSN never: its redacted form)."""
    return str(getattr(store, "where", type(store).__name__))


def _bind(address: ListenAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as exc:
        sock.close()
        raise ConfigError([f"cannot listen on {address}: {exc.strerror}"]) from None
    sock.setblocking(False)
    return sock


def _limits(section: IngestSettings | MetricsSettings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout_s=section.header_timeout_s,
        body_timeout_s=section.body_timeout_s,
        keepalive_timeout_s=section.keepalive_timeout_s,
        max_connections=section.max_connections,
    )


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Daemon:
    """One forwarder process: ingest, store, dispatchers, telemetry."""

    def __init__(self, settings: Settings, base: Path, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.base = base
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics(clock=self.clock, providers=[p.name for p in settings.providers])
        self.ready = asyncio.Event()
        self.ingest_url = ""
        self.metrics_url = ""
        self.dispatchers: dict[str, Dispatcher] = {}
        self.store: StoreBackend | None = None
        self._ingest: IngestApi | None = None
        self._oldest: dict[str, Mapping[RiskLevel, int]] = {}
        #: With several replicas (PostgreSQL): the lease coordinator and owned tasks.
        self.coordinator: Any = None
        self.owned_tasks: Any = None
        self._log = structlog.get_logger("forwarder")

    # -- composition -----------------------------------------------------------------

    def _keys(self) -> dict[str, tuple[SigningKey, SigningKey | None]]:
        """Each provider's assertion key and DPoP key (None: made when first needed)."""
        keys: dict[str, tuple[SigningKey, SigningKey | None]] = {}
        problems = []
        for p in self.settings.providers:
            try:
                key = load_signing_key(resolve_path(self.base, p.private_key_file))
            except KeyFileError as exc:
                problems.append(f"providers[{p.name}].private_key_file: {exc}")
                continue
            dpop_key = None
            if p.dpop_key_file:
                try:
                    dpop_key = load_signing_key(resolve_path(self.base, p.dpop_key_file))
                except KeyFileError as exc:
                    problems.append(f"providers[{p.name}].dpop_key_file: {exc}")
            keys[p.name] = (key, dpop_key)
        if problems:
            raise ConfigError(problems)
        return keys

    def _ingest_tokens(self) -> list[str]:
        if not self.settings.ingest.tokens_file:
            return []
        path = resolve_path(self.base, self.settings.ingest.tokens_file)
        try:
            return read_tokens_file(path)
        except OSError as exc:
            raise ConfigError([f"ingest.tokens_file: cannot read {path}: {exc.strerror}"]) from None

    async def _dispatcher(
        self,
        p: ProviderSettings,
        keys: tuple[SigningKey, SigningKey | None],
        store: StoreBackend,
        session: aiohttp.ClientSession,
        calls: CallLog | None = None,
    ) -> Dispatcher:
        d = self.settings.dispatch
        calls = calls or store
        call_key = p.name if calls is store else app_key(p)
        since_ms = int((self.clock.time() - p.window_s - 5) * 1000)
        history = [at_ms / 1000 for at_ms in await calls.recent_calls(call_key, since_ms)]
        key, dpop_key = keys
        dpop = None if p.dpop == "never" else DPoP(mode=p.dpop, clock=self.clock, key=dpop_key)
        tokens = TokenSource(
            session=session,
            org_url=p.org_url,
            client_id=p.client_id,
            key=key,
            clock=self.clock,
            timeout_s=p.timeout_s,
            observer=self.metrics.token_observer(p.name),
            dpop=dpop,
        )
        sender = RiskEventsSender(
            session=session,
            org_url=p.org_url,
            tokens=tokens,
            clock=self.clock,
            max_events=p.max_events_per_call,
            max_subjects=p.max_subjects_per_event,
            timeout_s=p.timeout_s,
        )
        budget = CallBudget(
            calls=p.calls_per_minute, window_s=p.window_s, clock=self.clock, history=history
        )
        return Dispatcher(
            provider=p.name,
            store=store,
            sender=sender,
            budget=budget,
            calls=calls,
            call_key=call_key,
            clock=self.clock,
            linger_s=d.linger_s,
            max_age_s=d.max_age_s,
            backoff_base_s=d.backoff_base_s,
            backoff_max_s=d.backoff_max_s,
            observer=self.metrics,
        )

    # -- run -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain and return."""
        s = self.settings
        keys = self._keys()
        ingest_tokens = self._ingest_tokens()
        ingest_sock = _bind(parse_listen(s.ingest.listen))
        metrics_sock = _bind(parse_listen(s.metrics.listen))
        names = [p.name for p in s.providers]
        store_path = resolve_path(self.base, s.store.path)
        connector = aiohttp.TCPConnector(limit_per_host=4)
        async with (
            open_store(
                s.store,
                base=self.base,
                providers=names,
                max_age_ms=int(s.dispatch.max_age_s * 1000),
                observer=self.metrics,
            ) as store,
            aiohttp.ClientSession(connector=connector, trust_env=True) as session,
        ):
            self.store = store
            for p in s.providers:
                self.dispatchers[p.name] = await self._dispatcher(p, keys[p.name], store, session)
            self._ingest = IngestApi(
                store=store,
                providers=names,
                clock=self.clock,
                tokens=ingest_tokens,
                max_body_bytes=s.ingest.max_body_bytes,
                max_age_s=s.dispatch.max_age_s,
                observer=self.metrics,
            )
            self.metrics.attach(self, capacity=s.store.max_pending, max_age_s=s.dispatch.max_age_s)
            await self.refresh()
            async with (
                serve(self._ingest.app(), ingest_sock, _limits(s.ingest)),
                serve(health_app(self.metrics, self.readiness), metrics_sock, _limits(s.metrics)),
            ):
                self.ingest_url = _url(ingest_sock)
                self.metrics_url = _url(metrics_sock)
                self._log.info(
                    "forwarder_started",
                    version=__version__,
                    ingest=self.ingest_url,
                    metrics=self.metrics_url,
                    store=str(store_path) if s.store.backend == "sqlite" else store_where(store),
                    providers=names,
                    pending=store.pending_total(),
                )
                self.ready.set()
                if s.store.backend == "postgres":
                    await self._dispatch_replicated(stop, store, keys, session)
                else:
                    await self._dispatch_until(stop)
            self._log.info("forwarder_stopped", pending=store.pending_total())

    async def _dispatch_until(self, stop: asyncio.Event) -> None:
        dispatch_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(d.run(dispatch_stop), name=f"dispatch:{name}")
                for name, d in self.dispatchers.items()
            ]
            await stop.wait()
            assert self._ingest is not None
            self._ingest.accepting = False
            dispatch_stop.set()
            grace = self.settings.dispatch.shutdown_grace_s
            self._log.info("forwarder_draining", grace_s=grace)
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                self._log.warning("call_cancelled_at_shutdown", task=task.get_name())
                task.cancel()

    async def _dispatch_replicated(
        self,
        stop: asyncio.Event,
        store: StoreBackend,
        keys: Mapping[str, tuple[SigningKey, SigningKey | None]],
        session: aiohttp.ClientSession,
    ) -> None:
        """Several replicas on PostgreSQL: dispatch only the providers this one owns.

        The coordinator claims an even share; a provider's dispatcher is (re)built when
        its lease is granted (budget history from the shared call log), runs under the
        lease's epoch (every call slot is reserved under it) and stops after its call in
        flight when the lease is lost. On ``stop``: drain, then release every lease.
        """
        from forwarder.ownership import OwnedTasks  # noqa: PLC0415
        from forwarder.store.postgres.budget import FencedCallLog  # noqa: PLC0415
        from forwarder.store.postgres.coordinator import Coordinator, ObserverGroup  # noqa: PLC0415
        from forwarder.store.postgres.owners import Replica  # noqa: PLC0415
        from forwarder.store.postgres.store import PostgresStore  # noqa: PLC0415
        from forwarder.telemetry.ownership import OwnershipMetrics  # noqa: PLC0415

        assert isinstance(store, PostgresStore)
        s = self.settings
        by_name = {p.name: p for p in s.providers}
        replica = Replica(
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}",
            socket.gethostname(),
            os.getpid(),
        )

        async def start(provider: str, epoch: int, own_stop: asyncio.Event) -> None:
            p = by_name[provider]
            await store.adopt(provider, (replica.id, epoch))
            calls = FencedCallLog(
                pool=store.pool,
                provider=provider,
                replica_id=replica.id,
                epoch=lambda: coordinator.epoch(provider),
                calls=p.calls_per_minute,
                window_s=p.window_s,
                clock=self.clock,
            )
            dispatcher = await self._dispatcher(p, keys[provider], store, session, calls)
            self.dispatchers[provider] = dispatcher
            await dispatcher.run(own_stop)

        tasks = OwnedTasks(start)
        coordinator = Coordinator(
            pool=store.pool,
            replica=replica,
            providers=list(by_name),
            ttl_s=s.store.lease_ttl_s,
            clock=self.clock,
            observer=ObserverGroup(
                tasks, OwnershipMetrics(self.metrics.registry, live=lambda: len(coordinator.live))
            ),
        )
        self.coordinator = coordinator
        self.owned_tasks = tasks
        coord_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            coordinating = tg.create_task(coordinator.run(coord_stop), name="coordinator")
            dispatching = tg.create_task(
                tasks.run(stop, grace_s=s.dispatch.shutdown_grace_s), name="owned-dispatch"
            )
            await stop.wait()
            assert self._ingest is not None
            self._ingest.accepting = False
            self._log.info("forwarder_draining", grace_s=s.dispatch.shutdown_grace_s)
            await dispatching
            # Only now hand the providers over: nothing of ours is in flight any more.
            coord_stop.set()
            await coordinating

    # -- readiness and live metrics (telemetry.LiveSource) ---------------------------

    def _ingest_up(self) -> bool:
        return self._ingest is not None and self._ingest.accepting and self.ready.is_set()

    def is_ready(self) -> bool:
        return self.store is not None and self.store.writable and self._ingest_up()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``/readyz``: 200 when the store is writable and ingest listens.

        A provider's trouble (failing credentials, 429s, Okta errors) is reported in the
        body, never as not-ready: restarting or unrouting the pod cannot fix it and
        would stop every other provider's intake too.
        """
        store = self.store
        store_ok = store is not None and (store.writable or await store.probe_writable())
        ingest_ok = self._ingest_up()
        now = self.clock.time()
        providers: dict[str, Any] = {}
        for name, d in self.dispatchers.items():
            st = d.state
            entry: dict[str, Any] = {
                "state": st.status,
                "pending": sum(store.pending_counts(name).values()) if store else None,
                "dead_letters": store.dead_letter_count(name) if store else None,
                "next_call_in_s": round(max(0.0, d.next_call_at() - now), 3),
                "last_call_at": _iso(st.last_call_at),
                "last_outcome": st.last_outcome,
            }
            if st.status != "ok":
                entry.update(
                    last_error=st.last_error,
                    hint=st.hint,
                    until=_iso(st.until),
                    retry_in_s=round(max(0.0, st.until - now), 3) if st.until else None,
                )
            providers[name] = entry
        ready = store_ok and ingest_ok
        body = {
            "status": "ready" if ready else "not_ready",
            "store": "writable" if store_ok else "unavailable",
            "ingest": "listening" if ingest_ok else "not_accepting",
            "providers": providers,
        }
        return ready, body

    def providers(self) -> Sequence[str]:
        return list(self.dispatchers)

    def store_entries(self) -> int:
        return self.store.pending_total() if self.store else 0

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]:
        return self.store.pending_counts(provider) if self.store else {}

    def dead_letter_count(self, provider: str) -> int:
        return self.store.dead_letter_count(provider) if self.store else 0

    def oldest_pending_ms(self, provider: str) -> Mapping[RiskLevel, int]:
        return self._oldest.get(provider, {})

    def budget(self, provider: str) -> BudgetView:
        d = self.dispatchers[provider]
        b = d.budget
        now = self.clock.time()
        wait = max(0.0, d.next_call_at() - now)
        # While Okta said "wait" (429 or Remaining: 0) no call is allowed, whatever our
        # own sliding window says.
        remaining = 0 if b.blocked_until() > now else b.remaining()
        pending = sum(self.pending_counts(provider).values())
        drain = drain_estimate_s(
            pending=pending,
            per_call=d.max_per_call,
            calls=b.calls,
            window_s=b.window_s,
            next_call_s=wait,
        )
        return BudgetView(
            calls=b.calls,
            window_s=b.window_s,
            remaining=remaining,
            next_call_s=wait,
            server_remaining=b.server_remaining,
            drain_s=drain,
        )

    def provider_status(self, provider: str) -> str:
        return self.dispatchers[provider].state.status

    async def refresh(self) -> None:
        if self.store is None:
            return
        if not self.store.writable:
            # forwarder_ready recovers on a scrape too, where nothing polls /readyz.
            await self.store.probe_writable()
        try:
            await self.store.refresh()
        except StoreError as exc:
            self._log.warning("metrics_refresh_failed", error=str(exc))
        for name in self.dispatchers:
            try:
                self._oldest[name] = await self.store.oldest_pending_ms(name)
            except StoreError as exc:
                # A scrape still answers (with the previous ages); readiness reports the store.
                self._log.warning("metrics_refresh_failed", error=str(exc))
                return


def _iso(epoch_s: float | None) -> str | None:
    return format_ms(int(epoch_s * 1000)) if epoch_s is not None else None


async def run_until_signalled(daemon: Daemon) -> None:
    """Run ``daemon`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
