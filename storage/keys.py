"""Every Redis key and channel name Stepwise uses, in one place."""

CHANNEL_PREFIX = "stepwise:run:"


def run_channel(run_id: str) -> str:
    """The pub/sub channel a run's events are published on."""
    return f"{CHANNEL_PREFIX}{run_id}"
