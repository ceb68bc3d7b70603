"""Configuration: one TOML file, every key overridable by ``AFFECT_BRIDGE_...`` variables.

Nested keys use ``__`` in variable names: ``AFFECT_BRIDGE_EMOTION__MODEL=/models/er``,
``AFFECT_BRIDGE_STRESS__ON=0.7``, ``AFFECT_BRIDGE_ANALYZERS='["prosody"]'``.
Precedence: explicit arguments > environment > TOML file > defaults.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from analyzers.emotion import EmotionConfig
from analyzers.loading import usable_cpus
from analyzers.prosody import ProsodyConfig
from analyzers.semantic import SemanticConfig
from analyzers.stress import StressConfig
from analyzers.vad import VadConfig
from analyzers.windowing import WindowConfig
from bridge.join_options import HttpUrl, JanusJoinOptions

__all__ = ["ConfigError", "OutboundSettings", "OutboxSettings", "Settings", "WebhookSettings",
           "describe_errors", "load_settings", "read_secret", "split_listen"]


class ConfigError(ValueError):
    """The configuration is unusable; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def read_secret(env: str | None, file: Path | None, what: str) -> str | None:
    """A secret, read the way every secret of the product is read: when ``file`` is named,
    its one line, and the file wins (``env`` is then not read); else the variable
    ``env``. Stripped of surrounding whitespace. None when no file is named and the variable is
    unset or empty; a named file that is unreadable or empty is a :class:`ConfigError`. Errors
    name ``what`` and where it was looked for, never a value."""
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{what}: file {str(file)!r} is unreadable ({type(exc).__name__})"
                              ) from None
        if not lines or not lines[0].strip():
            raise ConfigError(f"{what}: file {str(file)!r} is empty")
        if sum(1 for line in lines if line.strip()) > 1:  # refused, never silently cut short
            raise ConfigError(f"{what}: file {str(file)!r} holds more than one line; a secret is "
                              "one line (several webhook secrets: space-separated on it)")
        return lines[0].strip()
    value = os.environ.get(env, "").strip() if env else ""
    return value or None


_LISTEN = r"^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$"


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); an IPv6 host loses its brackets."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class LiveSettings(_Section):
    """Live calls."""

    silence_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a speaker without audio frames this long is reported "
        "idle (speaker.idle); analysed again, same id and baseline, when frames return")
    gone_timeout_s: float | None = Field(
        600.0, gt=0, le=86400, description="a speaker without audio frames this long has left "
        "for good (speaker.left, reason silent); null: only the call's signalling ends a speaker")
    ice_servers: list[str] = Field(default_factory=list,
                                   description="STUN/TURN URLs; none by default")
    ice_host_addresses: list[str] | None = Field(
        None, description="gather ICE host candidates only on these local addresses")


class JanusSettings(JanusJoinOptions):
    """One Janus server to auto-join rooms on (``[[janus]]`` blocks): ``url``, ``display_name``
    and ``leave_when_empty`` as a join request takes them (JanusJoinOptions), and more."""

    rooms: list[int | str] | str = Field(
        "*", description='"*", a list of room ids, or a regex searched in room id and description')
    poll_s: float = Field(5.0, gt=0, le=3600, description="how often the room list is polled")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,32}$",
                             description="prefix for call ids when several servers are set")
    apisecret_env: str | None = Field(None, pattern=_ENV_NAME,
                                      description="variable holding the server's api_secret")
    apisecret_file: Path | None = Field(None, description="file holding it instead")
    token_env: str | None = Field(None, pattern=_ENV_NAME,
                                  description="variable holding a Janus stored token (token_auth)")
    token_file: Path | None = Field(None, description="file holding it instead")
    pin_env: str | None = Field(None, pattern=_ENV_NAME,
                                description="variable holding the pin of the rooms joined here")
    pin_file: Path | None = Field(None, description="file holding it instead")

    def credentials(self) -> tuple[str | None, str | None, str | None]:
        """(apisecret, token, pin), each from its file or variable; a variable named here but
        empty is a ConfigError (a protected server would refuse every request)."""
        out = []
        for key in ("apisecret", "token", "pin"):
            env, file = getattr(self, f"{key}_env"), getattr(self, f"{key}_file")
            value = read_secret(env, file, f"janus {self.name or ''} {key}".replace("  ", " "))
            if value is None and env:
                raise ConfigError(f"janus {key}_env: the variable {env} is not set")
            out.append(value)
        return out[0], out[1], out[2]

    @field_validator("rooms")
    @classmethod
    def _rooms(cls, v: list[int | str] | str) -> list[int | str] | str:
        if isinstance(v, str) and v != "*":
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    def wants(self, room: int | str, description: str) -> bool:
        """Whether auto-join should take this room (before sharding)."""
        if self.rooms == "*":
            return True
        if isinstance(self.rooms, list):
            return str(room) in {str(r) for r in self.rooms}
        pattern = re.compile(self.rooms)
        return bool(pattern.search(str(room)) or pattern.search(description))


class ShardSettings(_Section):
    """This replica's share of the calls (rendezvous hashing of the call id), and where the
    other replicas are, so the control API works from any of them (bridge/control/routing.py)."""

    index: int = Field(0, ge=0)
    count: int = Field(1, ge=1, le=10_000)
    peer_url: str | None = Field(
        None, max_length=512,
        description="base URL of replica {index}'s control API, e.g. "
                    "http://ab-affect-bridge-{index}.ab-affect-bridge-headless.ns.svc:9464 "
                    "(the chart sets it); none: requests are never forwarded")
    peers: list[str] | None = Field(
        None, max_length=10_000,
        description="the replicas' base URLs in index order, instead of peer_url")
    forward_timeout_s: float = Field(60.0, gt=0, le=600,
                                     description="a request forwarded to its owner, in all")

    @field_validator("peer_url")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            url = v.format(index=0)
        except (KeyError, IndexError, ValueError):
            raise ValueError("must be a URL with {index} as its only placeholder, e.g. "
                             "http://ab-affect-bridge-{index}.ab-affect-bridge-headless.ns.svc"
                             ":9464") from None
        if "{index}" not in v:
            raise ValueError("must contain {index} (the replica index)")
        _check_peer(url, "peer_url")
        return v

    @field_validator("peers")
    @classmethod
    def _peers(cls, v: list[str] | None) -> list[str] | None:
        for i, url in enumerate(v or []):
            _check_peer(url, f"peers[{i}]")
        return v

    @model_validator(mode="after")
    def _index_in_range(self) -> ShardSettings:
        if self.index >= self.count:
            raise ValueError(f"index {self.index} must be below count {self.count}")
        if self.peers is not None and self.peer_url is not None:
            raise ValueError("set peer_url or peers, not both")
        if self.peers is not None and len(self.peers) != self.count:
            raise ValueError(f"peers names {len(self.peers)} replicas but count is {self.count}")
        return self

    def peer(self, index: int) -> str | None:
        """Replica ``index``'s base URL (no trailing slash), None when none is configured."""
        if self.peers is not None:
            return self.peers[index].rstrip("/")
        if self.peer_url is not None:
            return self.peer_url.format(index=index).rstrip("/")
        return None


def _check_peer(url: str, what: str) -> None:
    """A replica's base URL: http(s)://host[:port], nothing else (no credentials, path or query:
    the request's own path is appended). Errors never repeat the URL (it may hold a secret)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{what} is not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what}: a peer URL must not carry credentials")
    if (parts.scheme not in ("http", "https") or not parts.hostname
            or parts.path.strip("/") or parts.query or parts.fragment):
        raise ValueError(f"{what} must be http(s)://host[:port], without a path or query")


DEFAULT_WEBHOOK_EVENTS = ["call.*", "speaker.*", "stress.spike.*", "analyzer.degraded"]
# Standard Webhooks' recommended schedule after the first attempt: 5 s, 5 min, 30 min, 2 h, 5 h,
# 10 h, 10 h.
DEFAULT_RETRY_SCHEDULE_S = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


class WebhookSettings(_Section):
    """One webhook endpoint (``[[webhooks]]`` blocks). Secrets only from env or a file."""

    url: HttpUrl
    secret_env: str | None = Field(
        "AFFECT_BRIDGE_WEBHOOK_SECRET", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="variable holding whsec_<base64> secret(s), space-separated for rotation")
    secret_file: Path | None = Field(None, description="file holding the secret(s) instead")
    events: list[str] = Field(default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS),
                              min_length=1, description="event type patterns (fnmatch)")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                             description="label in metrics and the failed list; default host")
    timeout_s: float = Field(15.0, gt=0, le=300)
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S), max_length=50,
        description="delay before each retry; after the last the row is kept as failed")
    max_in_flight: int = Field(8, ge=1, le=256, description="concurrent requests")

    @field_validator("events")
    @classmethod
    def _events(cls, patterns: list[str]) -> list[str]:
        from bridge.events import EVENT_TYPES

        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(t, pattern) for t in EVENT_TYPES):
                raise ValueError(f"{pattern!r} matches no event type (types: "
                                 f"{', '.join(EVENT_TYPES)}; patterns are fnmatch, e.g. "
                                 "'stress.spike.*')")
        return patterns

    @field_validator("retry_schedule_s")
    @classmethod
    def _schedule(cls, v: list[float]) -> list[float]:
        if any(d < 0 for d in v):
            raise ValueError("delays must not be negative")
        return v


class OutboxSettings(_Section):
    path: Path = Field(Path("affect-bridge-outbox.sqlite3"),
                       description="SQLite file of the webhook outbox (a persistent volume)")
    max_rows: int = Field(100_000, ge=10, le=100_000_000)


class MetricsSettings(_Section):
    max_speakers: int = Field(1000, ge=0, le=100_000,
                              description="per-speaker series are exported for at most this many")
    token_env: str | None = Field(
        "AFFECT_BRIDGE_METRICS_TOKEN", pattern=_ENV_NAME,
        description="when this variable is set, /metrics needs Authorization: Bearer <it>")
    token_file: Path | None = Field(None, description="file holding that token instead")
    listen: str | None = Field(
        None, pattern=_LISTEN,
        description="serve /metrics on this address of its own instead of the control API's")

    def token(self) -> str | None:
        return read_secret(self.token_env, self.token_file, "metrics token")


class OutboundSettings(_Section):
    """Requests to media servers (bridge/outbound.py). The control API may join only servers
    named in config ([[janus]] urls) and those ``allow`` admits."""

    allow: list[str] = Field(
        default_factory=list, max_length=1000,
        description='more media servers the control API may join: "host", "host:port", '
                    '"*.example.org", "10.0.0.0/8", "10.0.0.0/8:8088", "[fd00::/8]:443"')
    timeout_s: float = Field(10.0, gt=0, le=120, description="per request")
    max_response_bytes: int = Field(1 << 20, ge=16 * 1024, le=64 << 20,
                                    description="a larger answer fails the request")

    @field_validator("allow")
    @classmethod
    def _allow(cls, entries: list[str]) -> list[str]:
        from bridge.allowlist import AllowRule

        for entry in entries:
            AllowRule.parse(entry)  # ValueError names the entry
        return entries


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AFFECT_BRIDGE_", env_nested_delimiter="__", extra="forbid",
    )

    listen: str = Field("127.0.0.1:9464", pattern=_LISTEN)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    workers: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = Field(
        "auto", description="`run`: worker processes that own the calls (auto: one per usable "
                            "core; 1: one process, no supervisor)")
    analyzers: list[str] = Field(default_factory=lambda: ["prosody", "emotion"],
                                 description="analyzer plugins to load, by entry-point name")
    plugin_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options for third-party analyzer plugins, by name")
    # The analyzers' own config types are the sections (validated here, extra keys refused).
    vad: VadConfig = Field(default_factory=VadConfig)
    windowing: WindowConfig = Field(default_factory=WindowConfig)
    prosody: ProsodyConfig = Field(default_factory=ProsodyConfig)
    emotion: EmotionConfig = Field(default_factory=EmotionConfig)
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    live: LiveSettings = Field(default_factory=lambda: LiveSettings())
    janus: list[JanusSettings] = Field(default_factory=list,
                                       description="Janus servers whose rooms are auto-joined")
    shard: ShardSettings = Field(default_factory=lambda: ShardSettings())
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    outbox: OutboxSettings = Field(default_factory=lambda: OutboxSettings())
    metrics: MetricsSettings = Field(default_factory=lambda: MetricsSettings())
    outbound: OutboundSettings = Field(default_factory=lambda: OutboundSettings())
    stress: StressConfig = Field(default_factory=StressConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def worker_count(self) -> int:
        """``workers`` as a number: ``auto`` is the cores this process may run on."""
        if self.workers != "auto":
            return self.workers
        return usable_cpus()

    def listen_address(self) -> tuple[str, int]:
        """``listen`` as (host, port); an IPv6 host loses its brackets."""
        return split_listen(self.listen)

    def analyzer_options(self) -> dict[str, dict[str, Any]]:
        """Options for each analyzer plugin, by name (built-ins from their sections)."""
        options = {k: dict(v) for k, v in self.plugin_options.items()}
        options["prosody"] = dataclasses.asdict(self.prosody)
        options["emotion"] = dataclasses.asdict(self.emotion)
        options["semantic"] = dataclasses.asdict(self.semantic)
        return options


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (TOML) under the environment; raise :class:`ConfigError` with a clear reason."""
    toml_file: Path | None = None
    if path is not None:
        toml_file = Path(path)
        if not toml_file.is_file():
            raise ConfigError(f"config file {str(toml_file)!r} does not exist")
        try:
            tomllib.loads(toml_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(toml_file)!r} is not valid TOML: {exc}") from exc

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=toml_file)

    try:
        settings: Settings = _FileSettings(**overrides)
        for server in settings.janus:
            server.credentials()
        settings.metrics.token()
    except ValidationError as exc:
        raise ConfigError("invalid configuration: " + describe_errors(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    return settings


def describe_errors(exc: ValidationError) -> str:
    """A pydantic validation error as one line: ``where: what`` for each error, ``; ``-joined
    (``where`` is the dotted path of the key, or ``(top level)``). Config errors and the
    control API's 422 reasons both read like this."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
