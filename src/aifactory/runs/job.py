"""The job side of a run: ``python -m aifactory.runs.job RUN_DIR`` inside each array task.

Reads the run's plan (``run.json``), executes the prepared notebook with the task's parameters
(papermill), and keeps the task's record (``task-N.json``) up to date: RUNNING when it starts,
then COMPLETED or FAILED with the end, exit code, elapsed time, the failing cell and the results.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

from aifactory.runs.notebook import failed_cell, recorded_results
from aifactory.runs.store import read_json, task_paths, write_json


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def execute_task(run_dir: Path, index: int) -> int:
    """Run task ``index`` of the run in ``run_dir``; returns the exit code for Slurm."""
    plan = read_json(run_dir / "run.json")
    parameters = plan["tasks"][index]
    paths = task_paths(run_dir, index)
    record = {
        "run_id": plan["run_id"], "task": index, "parameters": parameters,
        "job_id": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", ""),
        "array_index": index, "task_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "state": "RUNNING", "start": _now(), "end": None, "exit_code": None, "elapsed_seconds": None,
        "node": socket.gethostname(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "failed_cell": None, "error": None, "results": None,
    }
    write_json(paths.record, record)
    started = time.monotonic()
    exit_code = 0
    try:
        import papermill

        papermill.execute_notebook(
            str(run_dir / "notebook.ipynb"), str(paths.notebook), parameters=parameters,
            kernel_name=plan["kernel"], cwd=plan["workdir"] if Path(plan["workdir"]).is_dir() else str(run_dir),
            progress_bar=False, log_output=True,
        )
    except Exception as e:  # the notebook's own error is in the executed copy; anything else is noted
        exit_code = 1
        record["error"] = f"{type(e).__name__}: {e}"[:1000]
    if paths.notebook.exists():
        executed = json.loads(paths.notebook.read_text())
        record["failed_cell"] = failed_cell(executed)
        record["results"] = recorded_results(executed)
    if record["failed_cell"]:
        exit_code = 1
    record.update(state="FAILED" if exit_code else "COMPLETED", end=_now(), exit_code=exit_code,
                  elapsed_seconds=round(time.monotonic() - started, 1))
    write_json(paths.record, record)
    print(f"aifactory run {plan['run_id']} task {index}: {record['state']}"
          + (f" in cell {record['failed_cell']['index']} ({record['failed_cell']['error']})"
             if record["failed_cell"] else ""), flush=True)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m aifactory.runs.job RUN_DIR (inside a Slurm array task)", file=sys.stderr)
        return 2
    os.umask(0o077)
    # papermill logs each cell's output: that is the task's log (task-N.log)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    index = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    return execute_task(Path(argv[0]), index)


if __name__ == "__main__":
    sys.exit(main())
