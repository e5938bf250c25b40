"""runs.validate: every bad start request gets a clear UserError; good ones are normalised."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text
from sqlmodel import Session

from providers import Providers
from providers.prices import Prices
from storage import Event, LocalFanout, Run, Store, Thread, make_engine, upgrade
from tasks import InvalidInput, NotYours, UnknownAgent, UserError
from tasks.agents import Agents
from tasks.demo import demo_agent
from tasks.runs import NewRun, accept, validate
from tasks.runtime import Runtime
from tasks.settings import Settings
from tests.test_integration_support import wait_until

AGENTS = Agents([demo_agent(Settings())])
LIMIT = 50
GOOD = {"agent": "demo", "input": "What is 17 * 23?"}


def _validate(**overrides):
    return validate(AGENTS, **{**GOOD, **overrides}, max_input_chars=LIMIT)


@pytest.mark.parametrize(
    ("overrides", "error", "fragment"),
    [
        ({"agent": "nope"}, UnknownAgent, "unknown agent 'nope'; known agents: demo"),
        ({"agent": "Demo"}, UnknownAgent, "unknown agent 'Demo'"),
        ({"agent": None}, InvalidInput, "agent must be a non-empty string"),
        ({"agent": ""}, InvalidInput, "agent must be a non-empty string"),
        ({"agent": 7}, InvalidInput, "agent must be a non-empty string"),
        ({"agent": ["demo"]}, InvalidInput, "agent must be a non-empty string"),
        ({"agent": b"demo"}, InvalidInput, "agent must be a non-empty string"),
        ({"input": None}, InvalidInput, "input must be a non-empty string"),
        ({"input": 42}, InvalidInput, "input must be a non-empty string"),
        ({"input": b"bytes"}, InvalidInput, "input must be a non-empty string"),
        ({"input": ["hi"]}, InvalidInput, "input must be a non-empty string"),
        ({"input": {"text": "hi"}}, InvalidInput, "input must be a non-empty string"),
        ({"input": ""}, InvalidInput, "input must be a non-empty string"),
        ({"input": "   "}, InvalidInput, "input must be a non-empty string"),
        ({"input": "\n\t "}, InvalidInput, "input must be a non-empty string"),
        ({"input": "x" * (LIMIT + 1)}, InvalidInput, f"input is {LIMIT + 1} characters"),
        ({"input": "x" * (LIMIT + 1)}, InvalidInput, f"the limit is {LIMIT}"),
        ({"input": "x" * (LIMIT + 1)}, InvalidInput, "STEPWISE_MAX_INPUT_CHARS"),
        ({"input": "a\x00b"}, InvalidInput, "NUL"),
        ({"run_id": "not-a-uuid"}, InvalidInput, "run_id must be a UUID string, got 'not-a-uuid'"),
        ({"run_id": ""}, InvalidInput, "run_id must be a UUID string"),
        ({"run_id": 12345}, InvalidInput, "run_id must be a UUID string, got 12345"),
        ({"run_id": uuid.uuid4()}, InvalidInput, "run_id must be a UUID string"),
        ({"run_id": str(uuid.uuid4())[:-1]}, InvalidInput, "run_id must be a UUID string"),
        ({"run_id": "x" * 1000}, InvalidInput, "run_id must be a UUID string"),
        ({"thread": 5}, InvalidInput, "thread must be a string of 1 to 200 characters"),
        ({"thread": ""}, InvalidInput, "thread must be a string of 1 to 200 characters"),
        ({"thread": "t" * 201}, InvalidInput, "thread must be a string of 1 to 200 characters"),
        ({"thread": "a\x00b"}, InvalidInput, "thread must be"),
        ({"thread": ["t"]}, InvalidInput, "thread must be"),
        ({"idempotency_key": 5}, InvalidInput, "idempotency_key must be a string of 1 to 200"),
        ({"idempotency_key": ""}, InvalidInput, "idempotency_key must be"),
        ({"idempotency_key": "k" * 201}, InvalidInput, "idempotency_key must be"),
        ({"idempotency_key": b"key"}, InvalidInput, "idempotency_key must be"),
        ({"metadata": []}, InvalidInput, "metadata must be a JSON object with string keys"),
        ({"metadata": "a=b"}, InvalidInput, "metadata must be a JSON object"),
        ({"metadata": 1}, InvalidInput, "metadata must be a JSON object"),
        ({"metadata": [("a", 1)]}, InvalidInput, "metadata must be a JSON object"),
        ({"metadata": {1: "one"}}, InvalidInput, "metadata must be a JSON object with string keys"),
        ({"metadata": {"a": 1, None: 2}}, InvalidInput, "string keys"),
        ({"metadata": {("a",): 1}}, InvalidInput, "string keys"),
    ],
)
def test_validate_rejects_a_bad_request_with_a_clear_user_error(overrides, error, fragment):
    with pytest.raises(error) as caught:
        _validate(**overrides)
    assert isinstance(caught.value, UserError)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    "metadata",
    [
        {"tags": {1, 2}},
        {"when": object()},
        {"raw": b"bytes"},
        {"score": float("nan")},
        {"score": float("inf")},
        {"note": "a\x00b"},
        {"a\x00": 1},
    ],
    ids=["set", "object", "bytes", "nan", "infinity", "nul-in-value", "nul-in-key"],
)
def test_validate_rejects_metadata_values_json_cannot_hold(metadata):
    # Sets, objects and bytes fail to serialise when the run is inserted; NaN,
    # Infinity and NUL characters are refused by Postgres JSONB (a DataError).
    with pytest.raises(InvalidInput, match="metadata"):
        _validate(metadata=metadata)


@pytest.mark.parametrize(
    "overrides",
    [
        {"input": "\ud800 lone surrogate"},
        {"thread": "\udc00"},
        {"idempotency_key": "key-\ud83d"},
    ],
    ids=["input", "thread", "idempotency_key"],
)
def test_validate_rejects_text_that_cannot_be_encoded_as_utf8(overrides):
    with pytest.raises(InvalidInput):
        _validate(**overrides)


def test_validate_checks_the_agent_before_anything_else():
    with pytest.raises(UnknownAgent):
        _validate(agent="nope", input=None, run_id="bad", metadata=[])


def test_validate_accepts_a_good_request_and_fills_defaults():
    new = _validate()
    assert isinstance(new, NewRun)
    assert new.agent == "demo"
    assert new.input == GOOD["input"]
    assert (new.thread, new.idempotency_key, new.metadata) == (None, None, {})
    assert str(uuid.UUID(new.run_id)) == new.run_id


def test_validate_gives_each_request_a_fresh_run_id():
    assert _validate().run_id != _validate().run_id


@pytest.mark.parametrize(
    "given",
    [
        "12345678-1234-5678-1234-567812345678",
        "12345678123456781234567812345678",
        "{12345678-1234-5678-1234-567812345678}",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "12345678-1234-5678-1234-567812345678".upper(),
    ],
    ids=["canonical", "hex", "braces", "urn", "upper-case"],
)
def test_validate_normalises_the_run_id(given):
    assert _validate(run_id=given).run_id == "12345678-1234-5678-1234-567812345678"


def test_validate_keeps_the_optional_fields_it_was_given():
    new = _validate(
        thread="support-42",
        idempotency_key="order-7",
        metadata={"user": "ada", "tags": ["a", "b"], "n": 1.5, "nested": {"ok": None}},
    )
    assert new.thread == "support-42"
    assert new.idempotency_key == "order-7"
    assert new.metadata == {"user": "ada", "tags": ["a", "b"], "n": 1.5, "nested": {"ok": None}}


@pytest.mark.parametrize(
    "overrides",
    [
        {"input": "x" * LIMIT},
        {"input": "  padded question  "},
        {"input": "emoji ✓ and ünïcode"},
        {"thread": "t" * 200},
        {"thread": "t"},
        {"idempotency_key": "k" * 200},
        {"metadata": {}},
    ],
    ids=["input-at-limit", "padded", "unicode", "thread-200", "thread-1", "key-200", "meta-empty"],
)
def test_validate_accepts_values_at_the_limits(overrides):
    new = _validate(**overrides)
    for key, value in overrides.items():
        assert getattr(new, key if key != "metadata" else "metadata") == value


# Through runs.accept, on the embedded SQLite store and on Postgres --------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def runtime(request: pytest.FixtureRequest, tmp_path):
    """A runtime on a migrated database, built by hand (no environment involved)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'accept.db'}")
        upgrade(engine)
    else:
        engine = make_engine(request.getfixturevalue("database_url"))
    yield Runtime(
        Settings(max_input_chars=LIMIT),
        Store(engine, LocalFanout()),
        AGENTS,
        Providers(),
        Prices.load(),
    )
    engine.dispose()


def _rows(runtime, run_id: str) -> int:
    with Session(runtime.store.engine) as db:
        return sum(
            db.execute(select(func.count()).select_from(table).where(column == run_id)).scalar_one()
            for table, column in (
                (Run, Run.id),
                (Event, Event.run_id),
                (Thread, Thread.id),
            )
        )


def test_accept_records_a_good_request_once(runtime):
    run_id = str(uuid.uuid4())
    assert accept(runtime, **GOOD, run_id=run_id, metadata={"n": 1}) == (run_id, True)
    assert accept(runtime, **GOOD, run_id=run_id) == (run_id, False)
    assert _rows(runtime, run_id) == 3  # the run, its run.queued event, its thread


@pytest.mark.parametrize(
    "overrides",
    [
        {"metadata": {"tags": {1, 2}}},
        {"metadata": {"score": float("nan")}},
        {"metadata": {"note": "a\x00b"}},
        {"input": "\ud800 lone surrogate"},
    ],
    ids=["set-in-metadata", "nan-in-metadata", "nul-in-metadata", "surrogate-in-input"],
)
def test_accept_rejects_unstorable_values_with_a_user_error_and_writes_nothing(runtime, overrides):
    run_id = str(uuid.uuid4())
    with pytest.raises(UserError):
        accept(runtime, **{**GOOD, **overrides}, run_id=run_id)
    assert _rows(runtime, run_id) == 0


def test_an_owner_must_be_a_short_plain_string():
    for owner in ("", "x" * 201, 7, "a\x00b"):
        with pytest.raises(InvalidInput, match="owner must be a string of 1 to 200 characters"):
            _validate(owner=owner)
    assert _validate(owner="alice").owner == "alice"


def test_another_owners_run_id_idempotency_key_or_thread_is_refused_and_nothing_is_written(runtime):
    run_id, key, thread = str(uuid.uuid4()), f"key-{uuid.uuid4()}", f"thread-{uuid.uuid4()}"
    accept(runtime, **GOOD, run_id=run_id, idempotency_key=key, thread=thread, owner="alice")
    with Session(runtime.store.engine) as db:  # accept() only records: end the run by hand
        db.get(Run, run_id).status = "succeeded"  # so the thread is free for the next start
        db.commit()

    with pytest.raises(NotYours, match="run id is taken by a run of another owner"):
        accept(runtime, **GOOD, run_id=run_id, owner="bob")
    with pytest.raises(NotYours, match="idempotency key is taken by a run of another owner"):
        accept(runtime, **GOOD, idempotency_key=key, owner="bob")
    bobs = str(uuid.uuid4())
    with pytest.raises(NotYours, match=f"thread '{thread}' belongs to another owner"):
        accept(runtime, **GOOD, run_id=bobs, thread=thread, owner="bob")
    assert _rows(runtime, bobs) == 0

    assert accept(runtime, **GOOD, run_id=run_id, owner="alice") == (run_id, False)
    again = str(uuid.uuid4())
    assert accept(runtime, **GOOD, run_id=again, thread=thread, owner="alice") == (again, True)


def test_a_start_whose_idempotency_key_or_run_id_is_taken_answers_with_that_run_and_adds_no_thread(
    runtime,
):
    first, key, thread = str(uuid.uuid4()), f"key-{uuid.uuid4()}", f"thread-{uuid.uuid4()}"
    assert accept(runtime, **GOOD, run_id=first, idempotency_key=key) == (first, True)

    other = str(uuid.uuid4())  # a new run id, on a thread of its own, with a taken key
    assert accept(runtime, **GOOD, run_id=other, idempotency_key=key) == (first, False)
    assert _rows(runtime, other) == 0  # neither its run nor its thread

    on_a_thread = str(uuid.uuid4())
    accept(runtime, **GOOD, run_id=on_a_thread, thread=thread)
    # The same run id sent again without its thread: the run it names, and no thread of its own.
    assert accept(runtime, **GOOD, run_id=on_a_thread) == (on_a_thread, False)
    with Session(runtime.store.engine) as db:
        assert db.get(Thread, on_a_thread) is None
        assert db.get(Run, on_a_thread).thread_id == thread


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_two_starts_racing_onto_a_new_thread_take_turns_and_the_second_is_refused(runtime):
    thread = f"thread-{uuid.uuid4()}"
    inside, finish = threading.Event(), threading.Event()

    def hold_open(tx, run_id):  # the first start's transaction stays open, thread inserted
        inside.set()
        assert finish.wait(20)

    def waiting_on_a_lock() -> bool:
        with runtime.store.engine.connect() as connection:
            return bool(
                connection.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar()
            )

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(accept, runtime, **GOOD, thread=thread, then=hold_open)
        assert inside.wait(20)
        second = pool.submit(accept, runtime, **GOOD, thread=thread)
        wait_until("the second start to wait for the first's thread row", waiting_on_a_lock)
        finish.set()
        first_run, created = first.result(timeout=20)
        with pytest.raises(InvalidInput, match=f"has a run in progress \\({first_run}\\)"):
            second.result(timeout=20)

    assert created
    with Session(runtime.store.engine) as db:
        runs = db.execute(select(Run.id).where(Run.thread_id == thread)).scalars().all()
    assert list(runs) == [first_run]
