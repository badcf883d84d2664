"""Every course and tutorial notebook runs with papermill on its small parameters.

nbval then re-runs them against their stored outputs (second step of `make test`).
A failure names the notebook and the cell. Per-notebook times are printed at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("courses/*/[0-9][0-9]-*.ipynb")) + sorted(ROOT.glob("notebooks/[0-9][0-9]-*.ipynb"))
SMALL = {"DEVICE": "cpu", "DATA_SIZE": "small", "SEED": 0}
TIMES: dict[str, float] = {}

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 15 + 4


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_notebook_runs_with_small_parameters(notebook, tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    start = time.monotonic()
    try:
        papermill.execute_notebook(
            str(notebook), str(tmp_path / notebook.name), parameters=SMALL, kernel_name="python3",
            cwd=str(tmp_path), progress_bar=False, execution_timeout=300,
        )
    except PapermillExecutionError as e:
        pytest.fail(f"{notebook.relative_to(ROOT)} failed in cell {e.cell_index} "
                    f"(execution count {e.exec_count}): {e.ename}: {e.evalue}", pytrace=False)
    finally:
        TIMES[str(notebook.relative_to(ROOT))] = time.monotonic() - start
