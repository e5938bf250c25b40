"""Property: a malformed start request gets a UserError and writes nothing.

Through the Python client (`tasks.client.start_run`) and through the bare Celery
task (`stepwise.start_run`, as another application sends it by name), on the
embedded default with STEPWISE_MAX_INPUT_CHARS set small.
"""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, text

from tasks import UserError, client
from tasks.runtime import current_runtime

LIMIT = 40
AGENTS = ["demo", "parallel", "faulty", "looper"]  # the built-in one and tests/agents.py's
FIELDS = ("agent", "input", "run_id", "thread", "idempotency_key", "metadata")
COUNT = text(
    "SELECT (SELECT count(*) FROM stepwise_runs), (SELECT count(*) FROM stepwise_events), "
    "(SELECT count(*) FROM stepwise_threads)"
)
PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@pytest.fixture
def database(embedded: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The embedded database, migrated, with a small input limit; an engine to count its rows."""
    monkeypatch.setenv("STEPWISE_MAX_INPUT_CHARS", str(LIMIT))
    assert current_runtime().settings.max_input_chars == LIMIT  # builds and migrates it
    engine = create_engine(embedded["STEPWISE_DATABASE_URL"])
    assert _rows(engine) == (0, 0, 0)
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        runs, events, threads = connection.execute(COUNT).one()
    return runs, events, threads


# Strategies ---------------------------------------------------------------------------------------

_PLAIN = st.characters(exclude_categories=("Cs", "Cc"))  # no surrogates, no control characters
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(_PLAIN, max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(_PLAIN, max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
# Values of the wrong type for a string field (None excluded: it means "not given").
_NOT_A_STRING = st.one_of(
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.binary(max_size=10),
    st.lists(st.text(max_size=5), max_size=3),
    st.tuples(st.text(max_size=5)),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.builds(object),
    st.uuids(),
)
_WITH_NUL = st.builds(
    lambda a, b: f"{a}\x00{b}", st.text(_PLAIN, max_size=10), st.text(_PLAIN, max_size=10)
)

GOOD: dict[str, st.SearchStrategy[Any]] = {
    "agent": st.sampled_from(AGENTS),
    "input": st.text(_PLAIN, min_size=1, max_size=LIMIT).filter(str.strip),
    "run_id": st.none() | st.uuids().map(str),
    "thread": st.none() | st.text(_PLAIN, min_size=1, max_size=200),
    "idempotency_key": st.none() | st.text(_PLAIN, min_size=1, max_size=200),
    "metadata": st.none() | st.dictionaries(st.text(_PLAIN, max_size=10), _JSON, max_size=4),
}


def _not_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return True
    return False


_BAD_LABEL = st.one_of(
    _NOT_A_STRING,
    st.just(""),
    st.text(_PLAIN, min_size=201, max_size=260),
    _WITH_NUL,
)
BAD: dict[str, st.SearchStrategy[Any]] = {
    "agent": st.one_of(
        st.none(),
        _NOT_A_STRING,
        st.just(""),
        st.text(min_size=1, max_size=30).filter(lambda name: name not in AGENTS),
    ),
    "input": st.one_of(
        st.none(),
        _NOT_A_STRING,
        st.text(" \t\n\r\x0b\x0c\u00a0\u2003", max_size=20),  # empty or whitespace only
        st.text(_PLAIN, min_size=LIMIT + 1, max_size=LIMIT + 60),  # over the limit
        _WITH_NUL,
    ),
    "run_id": st.one_of(_NOT_A_STRING, st.text(max_size=60).filter(_not_uuid)),
    "thread": _BAD_LABEL,
    "idempotency_key": _BAD_LABEL,
    "metadata": st.one_of(
        st.lists(_JSON, max_size=3),
        st.text(max_size=10),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.tuples(st.text(max_size=3), _JSON),
        st.dictionaries(
            st.integers() | st.none() | st.tuples(st.integers()) | st.booleans(),
            _JSON,
            min_size=1,
            max_size=3,
        ),
        # A string key beside a non-string one.
        st.builds(
            lambda good, bad: {**good, **bad},
            st.dictionaries(st.text(max_size=5), _JSON, max_size=2),
            st.dictionaries(st.integers(), _JSON, min_size=1, max_size=2),
        ),
    ),
}


@st.composite
def malformed_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A start request with one to three bad fields; the others are good."""
    broken = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True))
    request = {}
    for field in FIELDS:
        if field in broken:
            request[field] = draw(BAD[field])
        else:
            request[field] = draw(GOOD[field])
    return request


# (a) The Python client ----------------------------------------------------------------------------


@settings(PROPERTY, max_examples=1500)
@given(request=malformed_requests())
def test_start_run_with_malformed_arguments_raises_a_user_error_and_writes_nothing(
    database, request
):
    before = _rows(database)
    with pytest.raises(UserError) as caught:
        client.start_run(
            request["agent"],
            request["input"],
            **{k: v for k, v in request.items() if k not in ("agent", "input")},
        )
    assert str(caught.value)
    event(type(caught.value).__name__)
    assert _rows(database) == before == (0, 0, 0)


# (b) The bare Celery task, called in process ------------------------------------------------------

_TASK_PARAMETERS = {"run_id", "agent", "input", "thread", "idempotency_key", "metadata"}
_UNEXPECTED = st.dictionaries(
    # Now and then "self", which collides with the bound task's own first parameter.
    st.integers(0, 9)
    .flatmap(lambda n: st.just("self") if n == 5 else st.text(max_size=20))
    .filter(lambda k: k not in _TASK_PARAMETERS),
    _JSON,
    min_size=1,
    max_size=3,
)


@st.composite
def malformed_task_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments `stepwise.start_run` must refuse."""
    shape = draw(st.sampled_from(["bad-request", "unexpected-keys", "bare-run-id", "nothing"]))
    if shape == "bad-request":
        kwargs = draw(malformed_requests())
    elif shape == "unexpected-keys":
        kwargs = {field: draw(GOOD[field]) for field in FIELDS}
        kwargs.update(draw(_UNEXPECTED))
    elif shape == "bare-run-id":
        # No agent and no input: the task looks the run up, and there is none.
        kwargs = {
            "run_id": draw(st.uuids().map(str) | st.text(_PLAIN, max_size=60) | _NOT_A_STRING)
        }
        for field in ("thread", "idempotency_key", "metadata"):
            if draw(st.booleans()):
                kwargs[field] = draw(GOOD[field] | BAD[field])
    else:
        kwargs = {}
    # Drop some None parameters: a sender may leave an argument out or send null.
    return {
        k: v
        for k, v in kwargs.items()
        if k not in _TASK_PARAMETERS or v is not None or draw(st.booleans())
    }


@settings(PROPERTY, max_examples=1500)
@given(kwargs=malformed_task_kwargs())
def test_start_run_task_with_malformed_kwargs_fails_with_a_user_error_and_writes_nothing(
    database, kwargs
):
    from tasks.app import start_run as start_run_task

    before = _rows(database)
    result = start_run_task.apply(kwargs=kwargs)
    assert result.failed(), result.result
    assert isinstance(result.result, UserError | TypeError), repr(result.result)
    event(type(result.result).__name__)
    assert _rows(database) == before == (0, 0, 0)


# Values no database can store ---------------------------------------------------------------------

_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_WITH_SURROGATE = st.builds(
    lambda a, s, b: f"{a}{s}{b}",
    st.text(_PLAIN, min_size=1, max_size=5),
    _SURROGATE,
    st.text(_PLAIN, max_size=5),
)
_UNSTORABLE_METADATA = st.dictionaries(
    st.text(_PLAIN, max_size=5),
    st.one_of(
        st.frozensets(st.integers(), max_size=2),
        st.binary(max_size=4),
        st.builds(object),
        st.complex_numbers(allow_nan=False, allow_infinity=False),
    ),
    min_size=1,
    max_size=2,
)


@st.composite
def unstorable_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Well-typed requests holding text or metadata values the database cannot store."""
    request = {field: draw(GOOD[field]) for field in FIELDS}
    field = draw(st.sampled_from(["input", "thread", "idempotency_key", "metadata"]))
    request[field] = draw(_UNSTORABLE_METADATA if field == "metadata" else _WITH_SURROGATE)
    return request


@settings(PROPERTY, max_examples=200)
@given(request=unstorable_requests())
def test_start_run_with_unstorable_values_raises_a_user_error_and_writes_nothing(database, request):
    before = _rows(database)
    with pytest.raises(UserError):
        client.start_run(
            request["agent"],
            request["input"],
            **{k: v for k, v in request.items() if k not in ("agent", "input")},
        )
    assert _rows(database) == before == (0, 0, 0)


@settings(PROPERTY, max_examples=100)
@given(run_id=_WITH_SURROGATE)
def test_start_run_task_with_an_unencodable_run_id_fails_with_a_user_error(database, run_id):
    from tasks.app import start_run as start_run_task

    result = start_run_task.apply(kwargs={"run_id": run_id})
    assert result.failed()
    assert isinstance(result.result, UserError), repr(result.result)
    assert _rows(database) == (0, 0, 0)
