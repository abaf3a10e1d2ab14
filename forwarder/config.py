"""Configuration: a TOML file read through pydantic-settings, overridable by env vars.

Every key can be overridden with ``FORWARDER_<SECTION>__<KEY>`` (for example
``FORWARDER_INGEST__LISTEN=0.0.0.0:8080``); the providers list as JSON in
``FORWARDER_PROVIDERS``. Secrets (private keys, ingest tokens) come from files.
Validation follows Okta's troubleshooting advice and names every problem at once.

``provider_files = ["providers.d/*.toml"]`` (globs relative to the config file) adds the
``[[providers]]`` tables of drop-in files, one customer org per file if the vendor
likes; problems in a drop-in name its file. ``SIGHUP`` re-reads all of it (``app``).
"""

from __future__ import annotations

import glob
import ipaddress
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from forwarder.errors import ConfigError

if TYPE_CHECKING:
    from forwarder.okta.keys import KeyCache

__all__ = [
    "DispatchSettings",
    "IngestSettings",
    "ListenAddress",
    "LogSettings",
    "MetricsSettings",
    "ProviderSettings",
    "Settings",
    "StoreSettings",
    "app_key",
    "is_loopback_host",
    "load_settings",
    "parse_listen",
    "read_tokens_file",
    "resolve_path",
    "store_dsn",
    "validate_client_id",
    "validate_org_url",
]

_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def _no_padding(value: str, field: str) -> str:
    if value != value.strip():
        raise ValueError(f"{field} has leading or trailing whitespace; remove it")
    if value[:1] in _QUOTES or value[-1:] in _QUOTES:
        raise ValueError(f"{field} is wrapped in quotes; remove them (copied from a JSON body?)")
    return value


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (the only hosts allowed plain http)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"https": 443, "http": 80}


def validate_org_url(value: str, field: str = "org_url") -> str:
    """Okta org URL rules: https (http only on loopback), no ``-admin`` host, no path.

    Returns the canonical form every consumer uses (token ``aud``, events and admin
    URLs, duplicate detection): scheme and host lower-case, the default port dropped,
    no trailing ``/``. ``https://ACME.okta.com:443/`` becomes ``https://acme.okta.com``.
    """
    _no_padding(value, field)
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"{field} must be an https:// URL such as https://acme.okta.com")
    if scheme == "http" and not is_loopback_host(host):
        raise ValueError(f"{field} must use https:// (plain http is only for loopback sandboxes)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{field} has an invalid port, e.g. https://{host}:8443") from None
    suffix = f":{port}" if port is not None and port != _DEFAULT_PORTS[scheme] else ""
    first = host.split(".")[0]
    if first.endswith("-admin"):
        fixed = f"{scheme}://{first[: -len('-admin')]}{host[len(first) :]}{suffix}"
        raise ValueError(f"{field} is the Admin Console URL; use the org URL instead ({fixed})")
    if parts.query or parts.fragment or parts.path.strip("/"):
        raise ValueError(f"{field} must be the bare org URL, without a path, e.g. https://{host}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{field} must not carry a user name or password, e.g. https://{host}")
    return f"{scheme}://{f'[{host}]' if ':' in host else host}{suffix}"


def validate_client_id(value: str, field: str = "client_id") -> str:
    """A client id as Okta shows it: no quotes, no whitespace."""
    _no_padding(value, field)
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{field} must be the service app's client id, e.g. 0oa1b2c3d4E5f6G7h8i9")
    return value


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> ListenAddress:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} must look like HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]")
    # ASCII digits only: int() also takes "\uff18\uff10", " 80" and "8_0".
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"{value!r}: port must be a number")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"{value!r}: port must be between 0 and 65535")
    return ListenAddress(host, number)


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


#: ``HOST:PORT`` checked at load time.
Listen = Annotated[str, AfterValidator(_check_listen)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ServerSection(_Section):
    """Bounds on slow and numerous clients of one listener (forwarder.serving)."""

    header_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    keepalive_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 1000


class IngestSettings(_ServerSection):
    """The detector API."""

    listen: Listen = "127.0.0.1:8080"
    tokens_file: str = ""
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1_048_576


class StoreSettings(_Section):
    """Where pending signals live: one SQLite file, or a PostgreSQL database shared by replicas.

    The DSN is a secret: it never appears in a log line, ``/readyz``, ``status`` or an
    error message (:func:`forwarder.store.postgres.dsn.describe_dsn` is what is shown).
    """

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "./data/forwarder.db"
    max_pending: Annotated[int, Field(ge=1)] = 1_000_000
    #: libpq URI (postgresql://user@host:5432/db); the password from PGPASSWORD/PGPASSFILE.
    dsn: str = ""
    #: A file holding the whole DSN (a mounted Secret), instead of ``dsn``.
    dsn_file: str = ""
    pool_size: Annotated[int, Field(ge=2, le=100)] = 10
    #: A replica that stops renewing loses its providers after this long (kill -9, partition).
    lease_ttl_s: Annotated[float, Field(ge=1, le=300)] = 15.0
    #: Create and migrate the schema at start (under an advisory lock), or require that
    #: ``forwarder store migrate`` did it (for operators who migrate as a separate step).
    migrate_at_start: bool = True

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str) -> str:
        from forwarder.store.postgres.dsn import check_dsn  # noqa: PLC0415

        if v:
            check_dsn(v, "store.dsn", inline=True)
        return v

    @field_validator("dsn_file")
    @classmethod
    def _dsn_file(cls, v: str) -> str:
        return _no_padding(v, "store.dsn_file") if v else v

    @model_validator(mode="after")
    def _backend_needs(self) -> StoreSettings:
        if self.backend == "postgres":
            if bool(self.dsn) == bool(self.dsn_file):
                raise ValueError(
                    'backend = "postgres" needs exactly one of dsn (a postgresql:// URI, the '
                    "password in PGPASSWORD or PGPASSFILE) or dsn_file (a file holding the "
                    "whole DSN, e.g. a mounted Secret)"
                )
        elif self.dsn or self.dsn_file:
            raise ValueError(
                'dsn and dsn_file are for backend = "postgres"; set backend or remove them'
            )
        return self


class MetricsSettings(_ServerSection):
    """The side port: /metrics, /healthz, /readyz."""

    listen: Listen = "127.0.0.1:9464"
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 100


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"


class DispatchSettings(_Section):
    """How batches are formed and retried (all providers)."""

    linger_s: Annotated[float, Field(ge=0, le=60)] = 2.0
    max_age_s: Annotated[float, Field(gt=0)] = 86_400.0
    backoff_base_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 300.0
    shutdown_grace_s: Annotated[float, Field(ge=0, le=300)] = 10.0


class ProviderSettings(_Section):
    """One Okta org (a third-party risk provider registered there)."""

    name: Annotated[
        str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    ]
    org_url: str
    client_id: str
    private_key_file: str
    calls_per_minute: Annotated[int, Field(ge=1, le=600)] = 3
    #: The budget window. Okta's is 60 s; shorten it only against a sandbox or in benchmarks.
    window_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_events_per_call: Annotated[int, Field(ge=1, le=20)] = 20
    max_subjects_per_event: Annotated[int, Field(ge=1, le=50)] = 50
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    #: DPoP (RFC 9449): "auto" uses it once the app requires it, "always" from the start.
    dpop: Literal["auto", "always", "never"] = "auto"
    #: The DPoP proof key (not the assertion key); empty: an EC P-256 key made at start.
    dpop_key_file: str = ""

    @field_validator("org_url")
    @classmethod
    def _org_url(cls, v: str) -> str:
        return validate_org_url(v)

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        return validate_client_id(v)

    @field_validator("private_key_file")
    @classmethod
    def _key_file(cls, v: str) -> str:
        _no_padding(v, "private_key_file")
        if not v:
            raise ValueError("private_key_file is required (a private JWK or PEM file)")
        return v


class _EnvSource(EnvSettingsSource):
    """Environment variables; a value that is not JSON where JSON is due is a ConfigError.

    pydantic-settings raises ``SettingsError`` with the decoder's traceback; the operator
    needs the variable's name instead, and never its value (it may hold secrets).
    """

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except ValueError as exc:
            var = f"{self.env_prefix}{field_name}".upper()
            if value is None:  # it came from FORWARDER_<FIELD>__<KEY> variables
                var = f"a {var}{self.env_nested_delimiter}* variable"
            reason = f": {exc.msg}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ConfigError(
                [
                    f"{var} is not valid JSON{reason} (value not shown; it may hold "
                    f"secrets); config/forwarder.toml shows the keys of {field_name}"
                ]
            ) from None


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="FORWARDER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    ingest: IngestSettings = IngestSettings()
    store: StoreSettings = StoreSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    dispatch: DispatchSettings = DispatchSettings()
    #: Globs (relative to the config file) of drop-in files holding ``[[providers]]``.
    provider_files: list[str] = Field(default_factory=list)
    providers: list[ProviderSettings] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs); no .env or secrets dir magic.
        return (_EnvSource(settings_cls), init_settings)


def app_key(provider: ProviderSettings) -> str:
    """The Okta service app a provider speaks for: its budget belongs to this, not the name.

    A client id names one app whatever URL spells its org (the same rule as the
    duplicate check in :func:`load_settings`), so the key is the client id.
    """
    return f"app:{provider.client_id}"


def _where(loc: tuple[int | str, ...], data: Mapping[str, Any], origins: Mapping[int, str]) -> str:
    parts: list[str] = []
    prefix = ""
    for i, item in enumerate(loc):
        if isinstance(item, int) and i > 0 and loc[i - 1] == "providers":
            name = None
            providers = data.get("providers")
            if isinstance(providers, list) and item < len(providers):
                entry = providers[item]
                name = entry.get("name") if isinstance(entry, dict) else None
            parts[-1] = f"providers[{name or item}]"
            if i == 1 and item in origins:
                prefix = f"{origins[item]}: "
        else:
            parts.append(str(item))
    return prefix + ".".join(parts)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"config file {path} does not exist"]) from None
    except OSError as exc:
        raise ConfigError([f"{path} cannot be read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path} is not valid TOML: {exc}"]) from None


def _drop_ins(data: dict[str, Any], base: Path, problems: list[str]) -> dict[int, str]:
    """Append the drop-in files' providers to ``data``; their index -> file, for messages."""
    patterns = data.get("provider_files", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        return {}  # the model names the type error
    providers = data.setdefault("providers", [])
    if not isinstance(providers, list):
        return {}
    origins: dict[int, str] = {}
    seen: set[Path] = set()
    for pattern in patterns:
        full = str(_resolve(base, pattern))
        matches = sorted(Path(m) for m in glob.glob(full) if Path(m).is_file())
        for path in matches:
            if path in seen:
                continue
            seen.add(path)
            try:
                doc = _read_toml(path)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            extra = sorted(set(doc) - {"providers"})
            if extra:
                problems.append(
                    f"{path}: only [[providers]] tables belong in a drop-in file "
                    f"(found {', '.join(extra)})"
                )
            entries = doc.get("providers", [])
            if not isinstance(entries, list):
                problems.append(f"{path}: providers must be [[providers]] tables")
                continue
            for entry in entries:
                origins[len(providers)] = str(path)
                providers.append(entry)
    return origins


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def read_tokens_file(path: Path) -> list[str]:
    """Ingest bearer tokens, one per line (blank lines and ``#`` comments ignored)."""
    tokens = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            tokens.append(line)
    return tokens


def load_settings(
    path: Path | None, *, check_files: bool = True, keys: KeyCache | None = None
) -> tuple[Settings, Path]:
    """Read, validate and cross-check the config; return it and the directory paths resolve from.

    Raises :class:`ConfigError` listing every problem found (a drop-in file's problems
    name the file). Relative file paths in the config resolve against the config file's
    directory. Each distinct key file is parsed once, through ``keys`` when given (the
    daemon passes its cache, so a reload re-reads only files that changed).
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    problems: list[str] = []
    if path is not None:
        data = _read_toml(path)
        base = path.resolve().parent
    origins = _drop_ins(data, base, problems) if path is not None else {}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        for err in exc.errors():
            where = _where(tuple(err["loc"]), data, origins)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check spelling; see config/forwarder.toml for every key)"
            problems.append(f"{where}: {msg}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    labels = {
        p.name: f"{origins[i]}: providers[{p.name}]" if i in origins else f"providers[{p.name}]"
        for i, p in enumerate(settings.providers)
    }
    names = [p.name for p in settings.providers]
    for name in sorted({n for n in names if names.count(n) > 1}):
        files = sorted({origins.get(i, str(path)) for i, n in enumerate(names) if n == name})
        problems.append(
            f"providers: the name {name!r} is used more than once (in {', '.join(files)})"
        )
    # Okta's client ids identify one service app, whatever URL spells its org: the same
    # id twice means one budget (3 calls a minute) spent by two dispatchers.
    apps: dict[str, ProviderSettings] = {}
    for provider in settings.providers:
        first = apps.setdefault(provider.client_id, provider)
        if first is not provider and first.name != provider.name:
            where = (
                f"at {provider.org_url}"
                if first.org_url == provider.org_url
                else f"at {first.org_url} and {provider.org_url}"
            )
            problems.append(
                f"{labels[provider.name]} and providers[{first.name}] are the same service "
                f"app (client_id {provider.client_id} {where}): Okta's 3 calls per minute "
                "belong to it once, so two entries would overspend it; keep one"
            )
    if not settings.providers:
        problems.append("providers: at least one [[providers]] entry is required")
    listen = parse_listen(settings.ingest.listen)
    if check_files:
        problems.extend(_check_files(settings, base, listen, keys or _new_cache(), labels))
    if problems:
        raise ConfigError(problems)
    return settings, base


def _new_cache() -> KeyCache:
    from forwarder.okta.keys import KeyCache  # noqa: PLC0415

    return KeyCache()


def _check_files(
    settings: Settings,
    base: Path,
    listen: ListenAddress,
    keys: KeyCache,
    where: Mapping[str, str],
) -> list[str]:
    from forwarder.okta.keys import KeyFileError  # noqa: PLC0415

    problems: list[str] = []
    if settings.ingest.tokens_file:
        tokens_path = _resolve(base, settings.ingest.tokens_file)
        try:
            if not read_tokens_file(tokens_path):
                problems.append(f"ingest.tokens_file: {tokens_path} holds no tokens")
        except OSError as exc:
            problems.append(f"ingest.tokens_file: cannot read {tokens_path}: {exc.strerror}")
    elif not is_loopback_host(listen.host):
        problems.append(
            f"ingest.tokens_file is required when ingest.listen ({listen}) is not loopback: "
            "detectors must present a bearer token"
        )
    if settings.store.dsn_file:
        from forwarder.store.postgres.dsn import read_dsn_file  # noqa: PLC0415

        try:
            read_dsn_file(_resolve(base, settings.store.dsn_file))
        except ValueError as exc:
            problems.append(str(exc))
    users: dict[Path, list[str]] = {}
    for provider in settings.providers:
        users.setdefault(_resolve(base, provider.private_key_file), []).append(provider.name)
    for key_path, names in users.items():
        try:
            keys.get(key_path)
        except KeyFileError as exc:
            more = f" (and {len(names) - 1} more providers)" if len(names) > 1 else ""
            problems.append(f"{where[names[0]]}.private_key_file{more}: {exc}")
    for provider in settings.providers:
        if provider.dpop_key_file:
            problems.extend(_check_dpop_key(provider, base, keys))
    return problems


def store_dsn(store: StoreSettings, base: Path) -> str:
    """The PostgreSQL DSN: ``store.dsn``, or what ``store.dsn_file`` holds.

    Raises :class:`ConfigError` (never quoting the DSN) when the file cannot be used.
    """
    if store.dsn:
        return store.dsn
    from forwarder.store.postgres.dsn import read_dsn_file  # noqa: PLC0415

    try:
        return read_dsn_file(_resolve(base, store.dsn_file))
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None


def _check_dpop_key(provider: ProviderSettings, base: Path, keys: KeyCache) -> list[str]:
    from forwarder.okta.keys import KeyFileError  # noqa: PLC0415

    where = f"providers[{provider.name}].dpop_key_file"
    try:
        dpop_key = keys.get(_resolve(base, provider.dpop_key_file))
    except KeyFileError as exc:
        return [f"{where}: {exc}"]
    try:
        assertion_key = keys.get(_resolve(base, provider.private_key_file))
    except KeyFileError:
        return []  # reported as private_key_file's problem
    if dpop_key.key.thumbprint() == assertion_key.key.thumbprint():
        return [f"{where}: is the client-assertion key; DPoP needs a separate key"]
    return []


def resolve_path(base: Path, value: str) -> Path:
    """A config path made absolute against the config file's directory."""
    return _resolve(base, value)
