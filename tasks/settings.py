"""The one settings object: everything Stepwise reads from the environment, outside Celery."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from tasks.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """Where state lives and how work is executed; see DESIGN.md's environment table."""

    database_url: str = "sqlite:///stepwise.db"
    # Each process's Postgres pool (docs/configuration.md, "Databases").
    database_pool_size: int = 10
    database_max_overflow: int = 20
    database_pool_timeout: float = 30.0
    database_prepared_statements: bool = True
    redis_url: str | None = None
    broker_url: str | None = None
    agents_modules: tuple[str, ...] = ()
    max_input_chars: int = 100_000
    openai_key_set: bool = False
    anthropic_key_set: bool = False
    prices_file: str | None = None
    watchdog_grace: float = 60.0
    watchdog_max_resumes: int = 3
    delta_interval: float = 0.05  # seconds: a model call publishes its deltas this often
    # The HTTP API (`stepwise serve`): bearer token → owner, and browser origins.
    api_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    api_secret: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    # Observability (docs/observability.md): Prometheus metrics, JSON logs, traces.
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR: prefork workers need one
    log_format: str = "text"
    traces_exporters: tuple[str, ...] = ()  # from the standard OTEL_* variables
    secrets: tuple[str, ...] = field(default=(), repr=False)  # values logs never show

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables, with the embedded defaults."""
        env = os.environ if env is None else env
        modules = env.get("STEPWISE_AGENTS", "")
        return cls(
            database_url=env.get("STEPWISE_DATABASE_URL") or cls.database_url,
            database_pool_size=_count(env, "STEPWISE_DATABASE_POOL_SIZE", cls.database_pool_size),
            database_max_overflow=_count(
                env, "STEPWISE_DATABASE_MAX_OVERFLOW", cls.database_max_overflow
            ),
            database_pool_timeout=_seconds(
                env, "STEPWISE_DATABASE_POOL_TIMEOUT", cls.database_pool_timeout
            ),
            database_prepared_statements=_switch(
                env, "STEPWISE_DATABASE_PREPARED_STATEMENTS", cls.database_prepared_statements
            ),
            redis_url=env.get("STEPWISE_REDIS_URL") or None,
            broker_url=env.get("CELERY_BROKER_URL") or None,
            agents_modules=tuple(m.strip() for m in modules.split(",") if m.strip()),
            max_input_chars=int(env.get("STEPWISE_MAX_INPUT_CHARS") or cls.max_input_chars),
            openai_key_set=bool(env.get("OPENAI_API_KEY")),
            anthropic_key_set=bool(env.get("ANTHROPIC_API_KEY")),
            prices_file=env.get("STEPWISE_PRICES") or None,
            watchdog_grace=float(env.get("STEPWISE_WATCHDOG_GRACE") or cls.watchdog_grace),
            watchdog_max_resumes=int(
                env.get("STEPWISE_WATCHDOG_MAX_RESUMES") or cls.watchdog_max_resumes
            ),
            delta_interval=float(env.get("STEPWISE_DELTA_INTERVAL") or cls.delta_interval),
            api_tokens=_tokens(env.get("STEPWISE_API_TOKENS", "")),
            api_secret=env.get("STEPWISE_API_SECRET") or None,
            cors_origins=tuple(
                o.strip() for o in env.get("STEPWISE_CORS_ORIGINS", "").split(",") if o.strip()
            ),
            metrics_port=_port(env.get("STEPWISE_METRICS_PORT", "")),
            metrics_addr=env.get("STEPWISE_METRICS_ADDR") or cls.metrics_addr,
            metrics_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            log_format=(log_format := _log_format(env.get("STEPWISE_LOG_FORMAT", ""))),
            traces_exporters=(exporters := _traces_exporters(env)),
            # Only JSON logs and spans scrub secrets: otherwise nobody pays for the scan.
            secrets=_secrets(env) if log_format == "json" or exporters else (),
        )

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: steps run in this process."""
        return self.broker_url is None


def _tokens(text: str) -> tuple[tuple[str, str], ...]:
    """`owner=token,owner=token` as (token, owner) pairs; `ConfigError` names a bad entry."""
    pairs = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        owner, _, token = entry.partition("=")
        if not owner.strip() or len(token.strip()) < 16:
            raise ConfigError(
                f"STEPWISE_API_TOKENS entry {owner.strip() or '?'}=…: "
                "write owner=token, with a token of at least 16 characters"
            )
        pairs.append((token.strip(), owner.strip()))
    return tuple(pairs)


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number of at least 0; `ConfigError` names the variable otherwise."""
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise ConfigError(f"{name}={text!r}: give a whole number, 0 or more")
    return int(text)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A number of seconds above 0; `ConfigError` names the variable otherwise."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name}={text!r}: give a number of seconds above 0")
    return value


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    """`on` or `off` (also true/false, yes/no, 1/0); `ConfigError` names the variable otherwise."""
    text = env.get(name, "").strip()
    if not text:
        return default
    if text.lower() in ("on", "true", "yes", "1"):
        return True
    if text.lower() in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"{name}={text!r}: write on or off")


def _port(text: str) -> int | None:
    """STEPWISE_METRICS_PORT: unset, or a TCP port."""
    if not text.strip():
        return None
    if not text.strip().isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"STEPWISE_METRICS_PORT={text!r}: give a TCP port, 1 to 65535")
    return int(text)


def _log_format(text: str) -> str:
    """STEPWISE_LOG_FORMAT: `text` (Celery's own format) or `json` (one object per line)."""
    value = text.strip().lower() or "text"
    if value not in ("text", "json"):
        raise ConfigError(f"STEPWISE_LOG_FORMAT={text!r}: write text or json")
    return value


def _traces_exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    """The trace exporters the standard OTEL_* variables ask for; none unless some are set.

    OTEL_TRACES_EXPORTER names them (`otlp`, `console`, …; `none` for none); an OTLP
    endpoint alone means `otlp`; OTEL_SDK_DISABLED=true turns everything off. Names
    are the SDK's entry points: `otlp` becomes `otlp_proto_http`, or `otlp_proto_grpc`
    when OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL is `grpc`.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", ""
    )
    otlp = "otlp_proto_grpc" if protocol.strip().lower() == "grpc" else "otlp_proto_http"
    named = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    named = [otlp if n == "otlp" else n for n in named if n]
    if named:
        return () if "none" in named else tuple(dict.fromkeys(named))
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return (otlp,) if any(env.get(name, "").strip() for name in endpoints) else ()


_SECRET_SUFFIXES = ("_KEY", "_SECRET", "_TOKEN", "_PASSWORD")


def _secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    """Values the logs must never show: OPENAI_API_KEY, ANTHROPIC_API_KEY and every other
    `*_KEY`, `*_SECRET`, `*_TOKEN` or `*_PASSWORD` variable, and the API tokens."""
    found = [
        value.strip()
        for name, value in env.items()
        if name.upper().endswith(_SECRET_SUFFIXES) and len(value.strip()) >= 8
    ]
    for entry in env.get("STEPWISE_API_TOKENS", "").split(","):
        token = entry.partition("=")[2].strip()
        if len(token) >= 8:
            found.append(token)
    return tuple(sorted(set(found), key=lambda s: (-len(s), s)))
