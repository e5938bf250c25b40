"""The database pool's settings, read from the environment."""

from __future__ import annotations

import pytest

from tasks.errors import ConfigError
from tasks.settings import Settings


def test_the_pool_settings_default_to_ten_connections_twenty_more_and_prepared_statements() -> None:
    settings = Settings.from_env({})

    assert settings.database_pool_size == 10
    assert settings.database_max_overflow == 20
    assert settings.database_pool_timeout == 30.0
    assert settings.database_prepared_statements is True


def test_the_pool_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "STEPWISE_DATABASE_POOL_SIZE": "4",
            "STEPWISE_DATABASE_MAX_OVERFLOW": "0",
            "STEPWISE_DATABASE_POOL_TIMEOUT": "2.5",
            "STEPWISE_DATABASE_PREPARED_STATEMENTS": "Off",
        }
    )

    assert settings.database_pool_size == 4
    assert settings.database_max_overflow == 0
    assert settings.database_pool_timeout == 2.5
    assert settings.database_prepared_statements is False


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("STEPWISE_DATABASE_POOL_SIZE", "ten", "give a whole number, 0 or more"),
        ("STEPWISE_DATABASE_MAX_OVERFLOW", "-1", "give a whole number, 0 or more"),
        ("STEPWISE_DATABASE_POOL_TIMEOUT", "0", "give a number of seconds above 0"),
        ("STEPWISE_DATABASE_POOL_TIMEOUT", "soon", "give a number of seconds above 0"),
        ("STEPWISE_DATABASE_POOL_TIMEOUT", "inf", "give a number of seconds above 0"),
        ("STEPWISE_DATABASE_PREPARED_STATEMENTS", "Maybe", "write on or off"),
    ],
)
def test_a_pool_setting_that_makes_no_sense_is_a_configuration_error_naming_it(
    name: str, value: str, says: str
) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({name: value})

    assert str(error.value) == f"{name}={value!r}: {says}"
