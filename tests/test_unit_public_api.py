"""Each package exports a handful of names; these tests pin them (as httpx pins its `__all__`)."""

import types

import pytest

import providers
import storage
import tasks

EXPECTED = {
    tasks: {
        "Agent",
        "ConfigError",
        "InvalidInput",
        "NotYours",
        "RunInfo",
        "RunNotFound",
        "StepInfo",
        "StepwiseError",
        "Tool",
        "ToolContext",
        "UnknownAgent",
        "UserError",
        "WaitTimeout",
        "afollow",
        "app",
        "cancel",
        "follow",
        "get_run",
        "get_steps",
        "start_run",
        "tool",
        "wait",
    },
    providers: {
        "STAND_IN_NOTICE",
        "ContextLengthExceeded",
        "Delta",
        "Fatal",
        "Message",
        "ModelRequest",
        "ModelResponse",
        "Provider",
        "ProviderError",
        "Providers",
        "Retryable",
        "ScriptedProvider",
        "StepwiseError",
        "TextPart",
        "Thinking",
        "ToolCall",
        "ToolResult",
        "ToolSpec",
        "Usage",
        "split_model",
    },
    storage: {
        "TERMINAL",
        "Event",
        "Fanout",
        "LocalFanout",
        "RedisFanout",
        "Run",
        "ScheduleTick",
        "SchemaOutOfDate",
        "Step",
        "Store",
        "Thread",
        "ThreadMessage",
        "Tx",
        "check_schema",
        "event_payload",
        "make_engine",
        "upgrade",
    },
}
PACKAGES = pytest.mark.parametrize("package", EXPECTED, ids=lambda p: p.__name__)


@PACKAGES
def test_all_is_the_expected_set_of_names(package):
    assert set(package.__all__) == EXPECTED[package]


@PACKAGES
def test_all_has_no_duplicates_and_every_name_resolves(package):
    assert len(package.__all__) == len(set(package.__all__))
    for name in package.__all__:
        assert getattr(package, name) is not None, name


@PACKAGES
def test_every_public_name_of_a_package_is_in_all(package):
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(package.__all__), public - set(package.__all__)


def test_the_error_root_is_shared_by_every_package():
    assert tasks.StepwiseError is providers.StepwiseError
    assert issubclass(tasks.UserError, providers.StepwiseError)
    assert issubclass(providers.Fatal, providers.ProviderError)


def test_the_celery_app_is_named_stepwise_and_registers_the_step_tasks_by_name():
    tasks.app.loader.import_default_modules()
    names = {name for name in tasks.app.tasks if name.startswith("stepwise.")}
    assert names >= {
        "stepwise.start_run",
        "stepwise.model_step",
        "stepwise.tool_step",
        "stepwise.finish_run",
    }
    assert tasks.app.main == "stepwise"
