"""DAG integrity: the file imports cleanly and is wired the way operators rely on."""

from __future__ import annotations

import os

import pytest

from es_backfill.config import OUTPUT_FORMATS


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["es_backfill"]


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"es_backfill"}


def test_dag_is_manual_only_and_documented(dag):
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None
    assert dag.doc_md and "extract" in dag.doc_md
    assert not dag.catchup


def test_every_param_has_a_title_and_description(dag):
    for name, param in dag.params.items():
        assert param.schema.get("title"), name
        assert len(param.description or "") > 20, name


def test_params_validate_what_the_form_can(dag):
    schema = {name: p.schema for name, p in dag.params.items()}
    assert schema["output_format"]["enum"] == list(OUTPUT_FORMATS)
    assert (schema["page_size"]["minimum"], schema["page_size"]["maximum"]) == (100, 10_000)
    assert schema["start"]["pattern"] and schema["end"]["pattern"] and schema["window"]["pattern"]


def test_params_take_an_emptied_name_or_filter_as_not_set(dag):
    from airflow.sdk.definitions.param import ParamValidationError

    for name in ("backfill_name", "query"):
        assert dag.params.get_param(name).resolve("") == ""  # accepted; config reads it as not set
    for name, bad in (("backfill_name", "../x"), ("query", "channel:email")):
        with pytest.raises(ParamValidationError):
            dag.params.get_param(name).resolve(bad)


def test_extract_is_mapped_in_the_pool_and_named_after_its_window(dag):
    extract = dag.get_task("extract")
    assert extract.is_mapped
    assert extract.pool == "es_backfill"
    assert "window" in extract.map_index_template and "label" in extract.map_index_template
    assert extract.execution_timeout is not None


def test_tasks_retry_with_backoff(dag):
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id


def test_tasks_are_wired_plan_extract_summarise(dag):
    assert dag.get_task("extract").downstream_task_ids == {"summarise"}
    assert dag.get_task("plan").downstream_task_ids == {"extract", "summarise"}
    assert dag.get_task("summarise").trigger_rule == "all_done_min_one_success"


def test_task_code_imports_only_from_dags_and_plugins():
    # MWAA workers get dags/ and plugins/ only; include/ is for tests, the demo and tooling.
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in [*root.joinpath("dags").rglob("*.py"), *root.joinpath("plugins").rglob("*.py")]:
        text = path.read_text()
        assert "from include" not in text and "import include" not in text, path
