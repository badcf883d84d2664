"""Batch runs without a cluster: parameter and sweep parsing, the batch script, Slurm output parsing,
the site section, and the job-side runner executing a notebook for real (papermill, no Slurm)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aifactory.hub.options import SessionOptions
from aifactory.runs import api, notebook, script
from aifactory.runs.cli import resources_from_args
from aifactory.runs.notebook import RunInputError
from aifactory.site import RunSettings, SiteError, load_site
from aifactory.slurm.arrays import parse_array_queue, parse_array_sacct, parse_submitted

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "data" / "sweep-example.ipynb"


# ---------------------------------------------------------------- values and sweeps

@pytest.mark.parametrize("text, value", [
    ("3", 3), ("0.01", 0.01), ("'two words'", "two words"), ("cuda", "cuda"), ("resnet-18", "resnet-18"),
    ("True", True), ("None", None), ("[1, 2]", [1, 2]), ("(1, 2)", [1, 2]), ("{'a': 1}", {"a": 1}),
])
def test_values_are_literals_or_plain_words(text, value):
    assert notebook.parse_value(text, "parameter X") == value


@pytest.mark.parametrize("text, says", [
    ("two words", "not a Python literal"), ("x; rm -rf /", "not a Python literal"), ("{1, 2}", "set values"),
    ("1j", "complex values"), ("b'x'", "bytes values"), ("float('nan')", "not a Python literal"),
    ("1e999", "not a finite number"), ("'" + "x" * 300 + "'", "longer than"),
])
def test_bad_values_are_refused_naming_the_parameter(text, says):
    with pytest.raises(RunInputError, match=says) as error:
        notebook.parse_value(text, "parameter LR")
    assert error.value.item == "parameter LR"


def test_sweeps_parse_literals_lists_and_words():
    assert notebook.parse_sweep("LR=0.1,0.01") == ("LR", [0.1, 0.01])
    assert notebook.parse_sweep("SHAPE=[1,2],[3]") == ("SHAPE", [[1, 2], [3]])
    assert notebook.parse_sweep("DEVICE=cpu,cuda") == ("DEVICE", ["cpu", "cuda"])


@pytest.mark.parametrize("spec, says", [
    ("LR=", "has no values"), ("LR", "expected NAME=v1"), ("=1,2", "expected NAME=v1"),
    ("1LR=1,2", "expected NAME=v1"), ("LR=1,1", "lists a value twice"), ("LR=1,,2", "empty value"),
    ("LR=a b,c", "not a Python literal"),
])
def test_malformed_sweeps_are_refused(spec, says):
    with pytest.raises(RunInputError, match=says):
        notebook.parse_sweep(spec)


def test_grid_is_the_cartesian_product_with_the_fixed_values():
    grid = notebook.parameter_grid({"EPOCHS": 5}, [("LR", [0.1, 0.2]), ("SEED", [0, 1, 2])], max_tasks=20)
    assert len(grid) == 6
    assert grid[0] == {"EPOCHS": 5, "LR": 0.1, "SEED": 0} and grid[-1] == {"EPOCHS": 5, "LR": 0.2, "SEED": 2}
    assert notebook.parameter_grid({}, [], max_tasks=1) == [{}]


def test_grid_refusals_name_the_sweep():
    with pytest.raises(RunInputError, match="21 combinations are more than the site allows in one run"):
        notebook.parameter_grid({}, [("A", list(range(7))), ("B", [1, 2, 3])], max_tasks=20)
    with pytest.raises(RunInputError, match="--sweep LR: is given twice"):
        notebook.parameter_grid({}, [("LR", [1]), ("LR", [2])], max_tasks=20)
    with pytest.raises(RunInputError, match="--sweep LR: is also given as a fixed parameter"):
        notebook.parameter_grid({"LR": 1}, [("LR", [2])], max_tasks=20)


def test_parameters_must_be_defined_in_the_parameters_cell():
    source = notebook.load_notebook(EXAMPLE)
    assert list(notebook.defined_parameters(source)) == ["LR", "EPOCHS", "SEED", "N_POINTS", "FAIL_AT_EPOCH",
                                                        "SLEEP_SECONDS"]
    notebook.check_parameters(source, ["LR", "SEED"])
    with pytest.raises(RunInputError, match=r"parameter BATCH: is not assigned .*\(it defines: LR, EPOCHS"):
        notebook.check_parameters(source, ["LR", "BATCH"])
    plain = notebook.load_notebook(ROOT / "tests" / "data" / "no-parameters.ipynb")
    with pytest.raises(RunInputError, match="has no cell tagged 'parameters'"):
        notebook.check_parameters(plain, ["EPOCHS"])
    notebook.check_parameters(plain, [])


def test_annotated_parameters_count():
    source = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]},
                         "source": "LR: float = 0.1\nA = B = 2\nprint('not a parameter')"}]}
    assert notebook.defined_parameters(source) == {"LR": "0.1", "B": "2", "A": "2"}


def test_unreadable_or_bad_notebooks_are_named(tmp_path):
    with pytest.raises(RunInputError, match="does not exist"):
        notebook.load_notebook(tmp_path / "missing.ipynb")
    (tmp_path / "bad.ipynb").write_text("{not json")
    with pytest.raises(RunInputError, match="cannot be read as a notebook"):
        notebook.load_notebook(tmp_path / "bad.ipynb")
    (tmp_path / "train.py").write_text("print(1)")
    with pytest.raises(RunInputError, match=r"is not a notebook \(.ipynb\)"):
        notebook.load_notebook(tmp_path / "train.py")


def test_api_parameters_are_checked_like_the_command_line():
    with pytest.raises(RunInputError, match="is not a Python name"):
        notebook.parameter_value("rm -rf", 1)
    with pytest.raises(RunInputError, match="set values"):
        notebook.parameter_value("LR", {1, 2})
    with pytest.raises(RunInputError, match="has no values"):
        notebook.sweep_values("LR", [])


# ---------------------------------------------------------------- the batch script

OPTIONS = SessionOptions(partition="cpu", account="uni-research", qos="interactive", gpu_type="any", gpus=0,
                         cpus=1, memory_gb=2, hours=1)


def test_batch_script_is_a_throttled_array_with_the_sessions_resource_lines():
    text = script.render(OPTIONS, "train-20261128-030000-ab12", "/home/u/aifactory-runs/train-x", 6, 4)
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=aifactory-run-train-20261128-030000-ab12",
        "#SBATCH --output=/home/u/aifactory-runs/train-x/task-%a.log",
        "#SBATCH --chdir=/home/u/aifactory-runs/train-x",
        "#SBATCH --array=0-5%4",
        "#SBATCH --partition=cpu",
        "#SBATCH --account=uni-research",
        "#SBATCH --qos=interactive",
        "#SBATCH --time=01:00:00",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=2G",
    ]
    assert "umask 077" in text
    assert text.rstrip().endswith("/opt/aifactory/venv/bin/python -m aifactory.runs.job "
                                  "/home/u/aifactory-runs/train-x")
    assert "#SBATCH --array=0-2\n" in script.render(OPTIONS, "r", "/home/u/r", 3, 4)


def test_batch_script_refuses_unsafe_paths():
    with pytest.raises(ValueError, match="run folder"):
        script.render(OPTIONS, "r", "/home/u/x y", 1, 4)
    with pytest.raises(ValueError, match="run folder"):
        script.render(OPTIONS, "r", "/home/u/$(id)", 1, 4)


def test_gpus_flag():
    def args(gpus):
        return argparse.Namespace(partition="", account="", qos="", cpus=None, memory_gb=None, hours=None,
                                  gpu_slices=None, gpus=gpus)

    assert resources_from_args(args("h100:1")) == {"gpus": 1, "gpu_type": "h100"}
    assert resources_from_args(args("2")) == {"gpus": 2}
    with pytest.raises(RunInputError, match="--gpus"):
        resources_from_args(args("h100;1"))


# ---------------------------------------------------------------- Slurm output (captured from the cluster)

SQUEUE = """\
1200|2|1200_2|PENDING|JobArrayTaskLimit|N/A|5:00|
1200|3|1200_3|PENDING|Priority|2026-11-28T04:00:00|5:00|
1200|0|1200_0|RUNNING|None|2026-11-28T02:58:13|4:58|vm
1203|N/A|1203|RUNNING|None|2026-11-28T02:58:13|4:58|node2
"""
SACCT = """\
1200_0|CANCELLED by 1009|0:0|00:00:02|2026-11-28T02:58:13|2026-11-28T02:58:15|vm
1200_1|FAILED|1:0|00:00:04|2026-11-28T02:58:13|2026-11-28T02:58:17|vm
1200_[2-3%2]|PENDING|0:0|00:00:00|Unknown|Unknown|None assigned
1207|COMPLETED|0:0|00:00:01|2026-11-28T02:58:13|2026-11-28T02:58:14|node2
"""


def test_squeue_array_tasks():
    tasks = parse_array_queue(SQUEUE)
    assert [(t.array_job_id, t.index, t.state) for t in tasks] == [
        ("1200", 2, "PENDING"), ("1200", 3, "PENDING"), ("1200", 0, "RUNNING"), ("1203", 0, "RUNNING")]
    assert tasks[0].reason == "JobArrayTaskLimit" and tasks[0].expected_start is None
    assert tasks[1].expected_start.hour == 4 and tasks[2].reason == "" and tasks[2].node == "vm"


def test_sacct_array_tasks_expand_the_pending_range():
    tasks = parse_array_sacct(SACCT)
    assert [(t.array_job_id, t.index, t.state) for t in tasks] == [
        ("1200", 0, "CANCELLED"), ("1200", 1, "FAILED"), ("1200", 2, "PENDING"), ("1200", 3, "PENDING"),
        ("1207", 0, "COMPLETED")]
    assert tasks[1].exit_code == "1:0" and tasks[2].node == "" and tasks[2].start is None


def test_sbatch_parsable():
    assert parse_submitted("1234\n") == "1234" and parse_submitted("1234;aifactory") == "1234"
    with pytest.raises(RuntimeError, match="did not print a job id"):
        parse_submitted("sbatch: error: oops")


def test_run_state_from_its_tasks():
    def run(*states):
        return api.Run("r", "nb", Path("/x"), "1", "", {}, [api.Task(i, {}, s) for i, s in enumerate(states)])

    assert run("PENDING", "PENDING").state == "PENDING"
    assert run("PENDING", "COMPLETED").state == "RUNNING"
    assert run("COMPLETED", "COMPLETED").state == "COMPLETED" and run("COMPLETED").finished
    assert run("COMPLETED", "FAILED").state == "FAILED"
    assert run("CANCELLED", "COMPLETED").state == "CANCELLED"
    assert not run("COMPLETED", "UNKNOWN").finished


# ---------------------------------------------------------------- the site section

def _site_with(tmp_path, runs):
    raw = yaml.safe_load((ROOT / "hub_config" / "site.yaml").read_text())
    raw.pop("runs", None)
    if runs is not None:
        raw["runs"] = runs
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_site_runs_defaults_and_checks(tmp_path):
    assert load_site(_site_with(tmp_path, None)).runs == RunSettings()
    assert load_site(_site_with(tmp_path, {"max_array_tasks": 5})).runs.max_array_tasks == 5
    for runs, key in (({"folder": "../x"}, "runs.folder"), ({"array_throttle": 0}, "runs.array_throttle"),
                      ({"max_array_tasks": "many"}, "runs.max_array_tasks"), ({"colour": 1}, "unknown key")):
        with pytest.raises(SiteError, match=key):
            load_site(_site_with(tmp_path, runs))


# ---------------------------------------------------------------- the job side, for real (no Slurm)

@pytest.mark.slow
def test_runner_records_results_and_the_failing_cell(tmp_path, monkeypatch):
    from aifactory.runs import job, store

    source = notebook.with_results_record(notebook.load_notebook(EXAMPLE))
    store.write_json(tmp_path / "notebook.ipynb", source)
    store.write_json(tmp_path / "run.json", {
        "run_id": "example", "workdir": str(tmp_path), "kernel": "python3",
        "tasks": [{"LR": 0.3, "EPOCHS": 5}, {"FAIL_AT_EPOCH": 1}]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert job.execute_task(tmp_path, 0) == 0
    record = json.loads((tmp_path / "task-0.json").read_text())
    assert record["state"] == "COMPLETED" and record["gpus"] == "1" and record["parameters"]["LR"] == 0.3
    assert set(record["results"]) == {"loss", "w", "b"} and record["results"]["loss"] < 1
    assert os.stat(tmp_path / "task-0.json").st_mode & 0o777 == 0o600

    assert job.execute_task(tmp_path, 1) == 1
    record = json.loads((tmp_path / "task-1.json").read_text())
    assert record["state"] == "FAILED" and record["results"] is None
    assert record["failed_cell"]["index"] == 3
    assert record["failed_cell"]["error"] == "RuntimeError: training diverged at epoch 1"
    assert record["failed_cell"]["first_line"] == "for epoch in range(EPOCHS):"


# ---------------------------------------------------------------- any text: refused by name, or JSON

@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_value_text_is_refused_or_json(text):
    try:
        value = notebook.parse_value(text, "parameter X")
    except RunInputError as e:
        assert e.item == "parameter X"
        return
    assert json.loads(json.dumps(value, allow_nan=False)) == value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_sweep_text_is_refused_or_distinct_json_values(text):
    try:
        name, values = notebook.parse_sweep(text)
    except RunInputError as e:
        assert e.item.startswith("--sweep")
        return
    assert notebook.NAME_RE.match(name) and values
    assert len({json.dumps(v, sort_keys=True, allow_nan=False) for v in values}) == len(values)
