"""The composition root: the only place that reads Settings and picks concrete parts.

``Daemon.run`` opens the store and an HTTP session, serves the ingest API and the health
side port, then starts one dispatcher per provider under a :class:`Supervisor`; every
task lives in one ``asyncio.TaskGroup``. Ingest opens before any token is fetched, and
readiness does not wait for tokens (at 1,000 orgs that would take minutes).

``SIGHUP`` (:meth:`Daemon.request_reload`) re-reads the config off the event loop. A valid
one is applied without dropping ingest or calls in flight: new providers start, removed
ones stop after their call in flight (their pending entries stay in the store, so adding
them back resumes), changed ones restart with their budget history, which belongs to the
Okta app (org + client id), not to the name. An invalid one is logged problem by problem
and the running config stays; ``forwarder_config_last_reload_successful`` says which.
Only providers are reloaded; other sections need a restart (a reload says so).

Shutdown (``stop`` set, e.g. by SIGTERM): ingest answers 503, dispatchers start no new
call, calls in flight get ``shutdown_grace_s`` to finish, then the rest is cancelled;
everything unsent stays in the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
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
    app_key,
    load_settings,
    parse_listen,
    read_tokens_file,
    resolve_path,
)
from forwarder.dispatcher import Dispatcher
from forwarder.errors import ConfigError
from forwarder.ingest import IngestApi
from forwarder.okta.dpop import DPoP
from forwarder.okta.events import RiskEventsSender
from forwarder.okta.keys import KeyCache, KeyFileError, SigningKey
from forwarder.okta.tokens import TokenSource
from forwarder.ratelimit import CallBudget, CallLog
from forwarder.serving import ConnectionLimits, serve
from forwarder.store import StoreBackend, open_store
from forwarder.supervisor import Supervisor
from forwarder.telemetry import (
    Metrics,
    health_app,
)
from forwarder.view import DaemonView

__all__ = ["Daemon", "run_until_signalled"]

#: Leases held at once by all dispatchers together (lease to ack). At 1,000 orgs each
#: holding a 1,000-signal lease while it waits for a connection, that was a million
#: signals in memory (610 MiB) and a thousand leases queued at the store ahead of ingest;
#: calls beyond this wait for a slot (FIFO, so every org gets its turn).
LEASES_IN_FLIGHT = 32
#: Of those, how many are being leased or acked at once (see ``Dispatcher``).
STORE_TURNS = 4


#: A replica that heard another reload but still reads another provider set from its own
#: file (a ConfigMap reaches each pod's mount up to a minute or so apart) looks again
#: this often, this many times.
FOLLOW_RETRY_S = 5.0
FOLLOW_RETRIES = 36


def providers_hash(providers: Sequence[ProviderSettings]) -> str:
    """A short digest of a provider set: what a reload announces to the other replicas."""
    text = json.dumps([p.model_dump(mode="json") for p in providers], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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

    def __init__(
        self,
        settings: Settings,
        base: Path,
        *,
        clock: Clock | None = None,
        config_path: Path | None = None,
        keys: KeyCache | None = None,
    ) -> None:
        self.settings = settings
        self.base = base
        self.config_path = config_path
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics(clock=self.clock, providers=[p.name for p in settings.providers])
        self.ready = asyncio.Event()
        self.ingest_url = ""
        self.metrics_url = ""
        self.store: StoreBackend | None = None
        self.keys = keys or KeyCache()
        self._supervisor: Supervisor | None = None
        #: With several replicas (PostgreSQL): the dispatchers of the providers this
        #: replica owns now, kept by :mod:`forwarder.replicas`.
        self.owned: dict[str, Dispatcher] | None = None
        self.coordinator: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._ingest: IngestApi | None = None
        #: What telemetry reads (``/readyz``, scrape-time gauges).
        self.view = DaemonView(self)
        self._reload_wanted = asyncio.Event()
        #: The next reload was asked by SIGHUP here (announce it) rather than by a NOTIFY.
        self._reload_here = False
        #: The provider set another replica announced that this one has not read yet.
        self._announced = ""
        #: With several replicas: each provider's keys and settings as of the last reload.
        self.replica_keys: dict[str, tuple[SigningKey, SigningKey | None]] = {}
        self._by_name = {p.name: p for p in settings.providers}
        self._reload_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(LEASES_IN_FLIGHT)
        self._store_turns = asyncio.Semaphore(STORE_TURNS)
        self._log = structlog.get_logger("forwarder")

    @property
    def ingest(self) -> IngestApi | None:
        """The ingest API once it is built."""
        return self._ingest

    @property
    def dispatchers(self) -> Mapping[str, Dispatcher]:
        """The running dispatchers by provider name."""
        if self.owned is not None:
            return self.owned
        return self._supervisor.running if self._supervisor else {}

    # -- composition -----------------------------------------------------------------

    def _load_keys(
        self, providers: Sequence[ProviderSettings]
    ) -> dict[str, tuple[SigningKey, SigningKey | None]]:
        """Each provider's assertion key and DPoP key (None: made when first needed).

        Runs in a thread; each distinct file is parsed once (cached by path and mtime).
        """
        keys: dict[str, tuple[SigningKey, SigningKey | None]] = {}
        problems = []
        for p in providers:
            try:
                key = self.keys.get(resolve_path(self.base, p.private_key_file))
            except KeyFileError as exc:
                problems.append(f"providers[{p.name}].private_key_file: {exc}")
                continue
            dpop_key = None
            if p.dpop_key_file:
                try:
                    dpop_key = self.keys.get(resolve_path(self.base, p.dpop_key_file))
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

    async def build_dispatcher(
        self,
        p: ProviderSettings,
        keys: tuple[SigningKey, SigningKey | None],
        previous: Dispatcher | None = None,
        calls: CallLog | None = None,
    ) -> Dispatcher:
        assert self.store is not None
        assert self._session is not None
        store, session = self.store, self._session
        calls = calls or store
        d = self.settings.dispatch
        since_ms = int((self.clock.time() - p.window_s - 5) * 1000)
        # The budget belongs to the Okta app, so the call log is keyed by it: a renamed or
        # changed provider keeps its window. Calls logged under the name (stores written
        # before the log was keyed by app) count too: that can only make us more careful.
        logged = await calls.recent_calls(app_key(p), since_ms)
        if calls is store:
            logged += await store.recent_calls(p.name, since_ms)
        history = sorted(at_ms / 1000 for at_ms in logged)
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
        if previous is not None and previous.call_key == app_key(p):
            # What Okta said (a 429's reset, Remaining: 0) holds for the same app.
            held = previous.budget.blocked_until() - self.clock.time()
            if held > 0:
                budget.block_for(held)
            budget.server_remaining = previous.budget.server_remaining
        return Dispatcher(
            provider=p.name,
            call_key=app_key(p),
            store=store,
            sender=sender,
            budget=budget,
            calls=calls,
            clock=self.clock,
            linger_s=d.linger_s,
            max_age_s=d.max_age_s,
            backoff_base_s=d.backoff_base_s,
            backoff_max_s=d.backoff_max_s,
            observer=self.metrics,
            slots=self._slots,
            store_turns=self._store_turns,
        )

    # -- run -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain and return."""
        s = self.settings
        ingest_tokens = self._ingest_tokens()
        ingest_sock = _bind(parse_listen(s.ingest.listen))
        metrics_sock = _bind(parse_listen(s.metrics.listen))
        store_path = resolve_path(self.base, s.store.path)
        connector = aiohttp.TCPConnector(limit_per_host=4)
        async with (
            open_store(
                s.store,
                base=self.base,
                providers=[p.name for p in s.providers],
                max_age_ms=int(s.dispatch.max_age_s * 1000),
                observer=self.metrics,
            ) as store,
            aiohttp.ClientSession(connector=connector, trust_env=True) as session,
        ):
            self.store = store
            self._session = session
            self._ingest = IngestApi(
                store=store,
                providers=[p.name for p in s.providers],
                clock=self.clock,
                tokens=ingest_tokens,
                max_body_bytes=s.ingest.max_body_bytes,
                max_age_s=s.dispatch.max_age_s,
                observer=self.metrics,
            )
            self.metrics.attach(
                self.view, capacity=s.store.max_pending, max_age_s=s.dispatch.max_age_s
            )
            # Ingest and liveness open first: signals are stored while dispatchers start.
            async with (
                serve(self._ingest.app(), ingest_sock, _limits(s.ingest)),
                serve(
                    health_app(self.metrics, self.view.readiness),
                    metrics_sock,
                    _limits(s.metrics),
                ),
                asyncio.TaskGroup() as tg,
            ):
                self.ingest_url = _url(ingest_sock)
                self.metrics_url = _url(metrics_sock)
                self._supervisor = Supervisor(tg)
                keys = await asyncio.to_thread(self._load_keys, s.providers)
                replicated: asyncio.Task[None] | None = None
                if s.store.backend == "postgres":
                    # Several replicas: each dispatches only the providers it leases.
                    from forwarder.replicas import dispatch_replicated  # noqa: PLC0415

                    self.owned = {}
                    replicated = tg.create_task(
                        dispatch_replicated(self, stop, store, keys), name="replicated"
                    )
                else:
                    for p in s.providers:
                        await self._supervisor.start(
                            p.name, await self.build_dispatcher(p, keys[p.name])
                        )
                self.metrics.config_loaded(ok=True, at=self.clock.time())
                await self.view.refresh()
                self._log.info(
                    "forwarder_started",
                    version=__version__,
                    ingest=self.ingest_url,
                    metrics=self.metrics_url,
                    store=str(store_path) if s.store.backend == "sqlite" else store_where(store),
                    providers=len(s.providers),
                    first_providers=[p.name for p in s.providers[:20]],
                    pending=store.pending_total(),
                )
                self.ready.set()
                reloads = tg.create_task(self._reload_loop(), name="reload")
                await stop.wait()
                reloads.cancel()
                self._ingest.accepting = False
                grace = self.settings.dispatch.shutdown_grace_s
                self._log.info("forwarder_draining", grace_s=grace)
                if replicated is not None:
                    await replicated
                else:
                    await self._supervisor.shutdown(grace)
            await self.view.close()
            self._log.info("forwarder_stopped", pending=store.pending_total())

    # -- reload ----------------------------------------------------------------------

    def request_reload(self) -> None:
        """Re-read the config soon (the SIGHUP handler); with several replicas, tell them."""
        self._reload_here = True
        self._reload_wanted.set()

    def provider_settings(self, name: str) -> ProviderSettings | None:
        """The settings of provider ``name`` as of the last config applied."""
        return self._by_name.get(name)

    def config_announced(self, digest: str) -> None:
        """Another replica applied a provider set (``digest``; "" if unknown): re-read ours."""
        if digest and digest == providers_hash(self.settings.providers):
            self._announced = ""
            return
        self._announced = digest
        self._reload_wanted.set()

    async def _reload_loop(self) -> None:
        behind = 0
        while True:
            if behind:
                # Our file still says something else than what was announced: look again.
                waiting = asyncio.ensure_future(self._reload_wanted.wait())
                napping = asyncio.ensure_future(self.clock.sleep(FOLLOW_RETRY_S))
                await asyncio.wait({waiting, napping}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                napping.cancel()
            else:
                await self._reload_wanted.wait()
            self._reload_wanted.clear()
            here, self._reload_here = self._reload_here, False
            try:
                await self.reload(announce=here)
            except Exception as exc:
                # A bug in applying a config must not stop a daemon serving every org.
                self._log.exception("config_reload_crashed", error=f"{type(exc).__name__}: {exc}")
                self.metrics.config_loaded(ok=False, at=self.clock.time())
            if self._announced and self._announced != providers_hash(self.settings.providers):
                behind += 1
                if behind > FOLLOW_RETRIES:
                    self._log.error(
                        "config_reload_diverged",
                        announced=self._announced,
                        hint="this replica's config file differs from the one another replica"
                        " applied; check the ConfigMap mount, then send SIGHUP",
                    )
                    self._announced, behind = "", 0
            else:
                self._announced, behind = "", 0

    async def _announce(self) -> None:
        """Tell the other replicas (PostgreSQL) that this provider set is now applied."""
        from forwarder.store.postgres.owners import CONFIG_CHANNEL  # noqa: PLC0415
        from forwarder.store.postgres.store import PostgresStore  # noqa: PLC0415

        assert isinstance(self.store, PostgresStore)
        digest = providers_hash(self.settings.providers)
        try:
            async with self.store.pool.acquire() as conn:
                await conn.execute("SELECT pg_notify($1, $2)", CONFIG_CHANNEL, digest)
        except Exception as exc:
            self._log.error(
                "config_announce_failed",
                error=f"{type(exc).__name__}: {exc}",
                hint="the other replicas keep their config; send them SIGHUP once the"
                " database is reachable",
            )
            return
        self._log.info("config_announced", providers=digest)

    async def reload(self, *, announce: bool = True) -> bool:
        """Re-read the config file and apply it; False (old config kept) when it is invalid.

        With several replicas (PostgreSQL) a valid reload is announced (``announce``):
        every replica re-reads its own file, validates it the same way and applies it.
        """
        async with self._reload_lock:
            if self.config_path is None:
                self._log.warning("config_reload_skipped", reason="started without a config file")
                return False
            try:
                # Parsing, globbing drop-ins and reading changed key files stay off the loop.
                new, _ = await asyncio.to_thread(load_settings, self.config_path, keys=self.keys)
                old = {p.name: p for p in self.settings.providers}
                starting = [p for p in new.providers if old.get(p.name) != p]
                keys = await asyncio.to_thread(self._load_keys, starting)
            except ConfigError as exc:
                for problem in exc.problems:
                    self._log.error("config_reload_problem", problem=problem)
                self._log.error(
                    "config_reload_failed",
                    problems=len(exc.problems),
                    hint="the running config is kept; fix the problems and send SIGHUP again",
                )
                self.metrics.config_loaded(ok=False, at=self.clock.time())
                return False
            await self._apply(new, keys)
            self.metrics.config_loaded(ok=True, at=self.clock.time())
            if announce and self.owned is not None:
                await self._announce()
            return True

    async def _apply(
        self, new: Settings, keys: Mapping[str, tuple[SigningKey, SigningKey | None]]
    ) -> None:
        assert self._supervisor is not None
        assert self._ingest is not None
        sup = self._supervisor
        old = {p.name: p for p in self.settings.providers}
        wanted = {p.name: p for p in new.providers}
        removed = [n for n in old if n not in wanted]
        added = [n for n in wanted if n not in old]
        changed = [n for n in wanted if n in old and old[n] != wanted[n]]
        fixed = [
            section
            for section in ("ingest", "store", "metrics", "log", "dispatch")
            if getattr(new, section) != getattr(self.settings, section)
        ]
        if fixed:
            self._log.warning(
                "config_reload_needs_restart",
                sections=fixed,
                hint="only providers are reloaded; restart to apply the other sections",
            )
        self.settings = self.settings.model_copy(
            update={"providers": new.providers, "provider_files": new.provider_files}
        )
        self._by_name = dict(wanted)
        self.metrics.add_providers(added)
        assert self.store is not None
        for name in added:
            # Tracked before ingest routes to it: broadcasts from here on are kept for it.
            await self.store.attach(name)
        # Ingest routes to the new set at once (a removed name gets its 400 from here on).
        self._ingest.set_providers(list(wanted))
        if self.owned is not None:
            # Several replicas: the coordinator gives up removed and changed providers
            # (their dispatchers stop after the call in flight) and releases their leases;
            # new and changed ones are claimable, each dispatcher built when its lease is
            # granted, with the settings and keys of now.
            for name in removed:
                self.replica_keys.pop(name, None)
            self.replica_keys.update(keys)
            self.coordinator.set_providers(list(wanted), changed=changed)
            self.metrics.remove_providers(removed)
            self._log_reloaded(wanted, added, removed, changed)
            return

        async def restart(name: str) -> None:
            previous = await sup.stop(name)
            await sup.start(name, await self.build_dispatcher(wanted[name], keys[name], previous))

        async def start(name: str) -> None:
            await sup.start(name, await self.build_dispatcher(wanted[name], keys[name]))

        def forget(name: str) -> None:
            # Its series go once its last call is counted (unless it was added back).
            if name not in {p.name for p in self.settings.providers}:
                self.metrics.remove_providers([name])

        for name in removed:
            sup.retire(name, then=forget)
        await asyncio.gather(*(restart(n) for n in changed), *(start(n) for n in added))
        self._log_reloaded(wanted, added, removed, changed)

    def _log_reloaded(
        self,
        wanted: Mapping[str, ProviderSettings],
        added: list[str],
        removed: list[str],
        changed: list[str],
    ) -> None:
        self._log.info(
            "config_reloaded",
            providers=len(wanted),
            added=len(added),
            removed=len(removed),
            changed=len(changed),
            names={
                "added": added[:20],
                "removed": removed[:20],
                "changed": changed[:20],
            },
        )

    def is_ready(self) -> bool:
        return self.view.is_ready()


async def run_until_signalled(daemon: Daemon) -> None:
    """Run ``daemon`` until SIGTERM or SIGINT; SIGHUP re-reads its config."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    try:
        await daemon.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
