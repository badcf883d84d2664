"""Every course and tutorial notebook runs with papermill on its small parameters.

Each run also executes the worked solution of every exercise (tests/solutions.py): the solution
code is inserted as a cell right after the markdown cell that shows it, so it runs after the
notebook's preceding code, with its assertions. Course folders' other files (scripts the notebooks
call) are copied next to the notebook, as a student's copy has them.

nbval then re-runs the notebooks as stored against their stored outputs (second step of `make test`).
A failure names the notebook and the cell. Per-notebook times are printed at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from solutions import SOLUTION_TAG, solutions, with_solutions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("courses/*/[0-9][0-9]-*.ipynb")) + sorted(ROOT.glob("notebooks/[0-9][0-9]-*.ipynb"))
SMALL = {"DEVICE": "cpu", "DATA_SIZE": "small", "SEED": 0}
TIMES: dict[str, float] = {}

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def run_with_solutions(notebook: Path, workdir: Path, parameters: dict = SMALL) -> int:
    """Run ``notebook`` with its solutions in ``workdir``; returns how many solutions ran.

    Fails the test with the notebook, the cell and, for a solution, the exercise it belongs to.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = json.loads(notebook.read_text())
    for extra in notebook.parent.iterdir():
        if extra.is_file() and extra.suffix not in (".ipynb", ".yaml") and not extra.name.startswith("."):
            shutil.copy2(extra, workdir / extra.name)
    prepared = workdir / f"with-solutions-{notebook.name}"
    prepared.write_text(json.dumps(with_solutions(source)))
    executed = workdir / notebook.name
    try:
        papermill.execute_notebook(
            str(prepared), str(executed), parameters=parameters, kernel_name="python3",
            cwd=str(workdir), progress_bar=False, execution_timeout=300,
        )
    except PapermillExecutionError as e:
        # papermill adds banner cells to a failed notebook: find the failed cell by its error output
        cells = json.loads(executed.read_text())["cells"]
        cell = next(c for c in cells if any(o.get("output_type") == "error" for o in c.get("outputs", [])))
        where = (f"the worked solution shown in markdown cell {cell['metadata']['solution_of_cell']}"
                 if SOLUTION_TAG in cell["metadata"].get("tags", []) else f"cell {e.cell_index}")
        pytest.fail(f"{notebook.name} failed in {where} (execution count {e.exec_count}): "
                    f"{e.ename}: {e.evalue}", pytrace=False)
    return len(solutions(source))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 15 + 4


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_notebook_runs_with_small_parameters(notebook, tmp_path):
    start = time.monotonic()
    try:
        ran = run_with_solutions(notebook, tmp_path)
    finally:
        TIMES[str(notebook.relative_to(ROOT))] = time.monotonic() - start
    assert ran >= 1, f"{notebook.name}: no worked solution was executed"
