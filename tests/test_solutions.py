"""The worked solutions of the exercises are found, parse, and really run (tests/solutions.py).

The notebooks' own solutions run inside test_notebooks' papermill runs; here the extraction is
checked on every notebook (seconds), and one small notebook shows that a wrong solution fails.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest
from solutions import SOLUTION_TAG, exercises, solutions, with_solutions
from test_notebooks import NOTEBOOKS, ROOT, run_with_solutions


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_every_exercise_has_a_solution_that_parses(notebook):
    nb = json.loads(notebook.read_text())
    found = solutions(nb)
    tasks = exercises(nb)
    assert tasks, f"{notebook.name}: no exercise"
    bounds = [*tasks[1:], len(nb["cells"])]
    for task, end in zip(tasks, bounds, strict=True):
        assert any(task <= index < end for index, _ in found), \
            f"{notebook.name}: the exercise in cell {task} has no python solution in <details>"
    for index, code in found:
        ast.parse(code, filename=f"{notebook.name} solution in cell {index}")


def notebook_with(*cells) -> dict:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("SEED = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def exercise(code: str):
    return nbformat.v4.new_markdown_cell(
        "## Exercise\nDouble x.\n\n<details><summary>Show solution</summary>\n\n"
        f"```python\n{code}\n```\n\nExplanation.\n</details>")


def test_solutions_are_inserted_after_the_preceding_code():
    nb = notebook_with(nbformat.v4.new_code_cell("x = 21"), exercise("y = 2 * x\nassert y == 42"),
                       nbformat.v4.new_code_cell("# Your code here"))
    cells = with_solutions(nb)["cells"]
    assert [c["source"] for c in cells[1:4]] == ["x = 21", nb.cells[2].source, "y = 2 * x\nassert y == 42"]
    assert cells[3]["metadata"]["tags"] == [SOLUTION_TAG]
    assert len(nb.cells) == 4, "the original notebook is left alone"


@pytest.mark.notebooks
@pytest.mark.slow
def test_a_wrong_solution_fails_and_names_its_exercise(tmp_path: Path):
    good = tmp_path / "good"
    bad = tmp_path / "bad"
    for folder, code in ((good, "y = 2 * x\nassert y == 42"), (bad, "y = 3 * x\nassert y == 42, y")):
        folder.mkdir()
        nbformat.write(nbformat.from_dict(notebook_with(nbformat.v4.new_code_cell("x = 21"), exercise(code))),
                       folder / "01-demo.ipynb")
    assert run_with_solutions(good / "01-demo.ipynb", good, {"SEED": 0}) == 1
    with pytest.raises(pytest.fail.Exception, match="worked solution shown in markdown cell 2.*AssertionError: 63"):
        run_with_solutions(bad / "01-demo.ipynb", bad, {"SEED": 0})
