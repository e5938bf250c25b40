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
    redis_url: str | None = None
    broker_url: str | None = None
    agents_modules: tuple[str, ...] = ()
    max_input_chars: int = 100_000
    openai_key_set: bool = False
    anthropic_key_set: bool = False
    prices_file: str | None = None
    watchdog_grace: float = 60.0
    watchdog_max_resumes: int = 3
    # The HTTP API (`stepwise serve`): bearer token → owner, and browser origins.
    api_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    api_secret: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables, with the embedded defaults."""
        env = os.environ if env is None else env
        modules = env.get("STEPWISE_AGENTS", "")
        return cls(
            database_url=env.get("STEPWISE_DATABASE_URL") or cls.database_url,
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
            api_tokens=_tokens(env.get("STEPWISE_API_TOKENS", "")),
            api_secret=env.get("STEPWISE_API_SECRET") or None,
            cors_origins=tuple(
                o.strip() for o in env.get("STEPWISE_CORS_ORIGINS", "").split(",") if o.strip()
            ),
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
