"""The rows steps decide on (`storage/rows.py`): the models' columns, read with Core."""

from dataclasses import fields

from sqlalchemy import inspect

from providers.types import ToolCall
from storage import Run, Step
from storage.rows import (
    RunRow,
    StepRow,
    lock_run,
    lock_run_and_round,
    steps_of,
)
from tasks.records import add_steps
from tests.stores import new_run  # its `store` fixture comes through conftest


def test_a_run_row_and_a_step_row_have_their_model_s_columns_and_no_other():
    for row, model in ((RunRow, Run), (StepRow, Step)):
        mapped = [attribute.key for attribute in inspect(model).column_attrs]
        assert [field.name for field in fields(row)] == mapped
        assert list(row.columns) == mapped


def test_a_run_row_names_the_column_behind_an_attribute_of_another_name():
    assert RunRow.columns["meta"] == "metadata"


def test_a_run_locked_again_with_its_steps_is_the_same_row_read_fresh(store):
    run_id = new_run(store, status="running")
    with store.transaction() as tx:
        add_steps(tx.db, run_id, [(1, None)])
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        tx.write(run, usage={"input_tokens": 5})
        found = lock_run_and_round(tx.db, run_id, 2)
        assert found is not None
        again, steps = found
        assert again is run  # whoever holds the run sees what the read found
        assert run.usage == {"input_tokens": 5}
        assert [(s.number, s.kind, s.status) for s in steps] == [(1, "model", "pending")]


def test_steps_are_read_in_order_all_of_them_or_those_asked_for(store):
    run_id = new_run(store, status="running")
    with store.transaction() as tx:
        add_steps(tx.db, run_id, [(3, None), (1, None), (2, None)])
    with store.transaction() as tx:
        assert [s.number for s in steps_of(tx.db, run_id)] == [1, 2, 3]
        assert [s.number for s in steps_of(tx.db, run_id, [3, 1])] == [1, 3]
        assert steps_of(tx.db, run_id, []) == []


def test_a_model_step_reads_the_outputs_of_its_round_and_of_earlier_invalid_calls_only(store):
    run_id = new_run(store, status="running")
    call = ToolCall(id="c", name="add", arguments="{}")
    outputs = {
        1: {"message": "round 1"},
        2: {"content": "bad arguments", "invalid": True},
        3: {"content": "3", "invalid": False},
        4: {"message": "round 2"},
        5: {"content": "5", "invalid": False},
    }
    with store.transaction() as tx:
        add_steps(tx.db, run_id, [(1, None), (2, call), (3, call), (4, None), (5, call), (6, None)])
    with store.transaction() as tx:
        run = lock_run(tx.db, run_id)
        assert run is not None
        tx.write(run, usage={"input_tokens": 7})
        for step in steps_of(tx.db, run_id, list(outputs)):
            usage = {"input_tokens": step.number} if step.kind == "model" else None
            tx.write(step, status="succeeded", output=outputs[step.number], usage=usage)
    with store.transaction() as tx:
        found = lock_run_and_round(tx.db, run_id, 6)
        assert found is not None
        run, steps = found
        assert run.usage == {"input_tokens": 7}
        assert [s.output for s in steps] == [None, outputs[2], None, outputs[4], outputs[5], None]
        assert [s.usage for s in steps] == [None, None, None, {"input_tokens": 4}, None, None]
        assert [s.status for s in steps] == ["succeeded"] * 5 + ["pending"]
