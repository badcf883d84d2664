"""A run's folder: ``~/<runs.folder>/<run-id>/``, private to the user (0700, files 0600).

Layout: ``run.json`` (the plan: parameters per task, resources, job id), ``notebook.ipynb`` (the
submitted notebook, as the job executes it), and per task ``task-N.json`` (its record, written by
the job), ``task-N.ipynb`` (the executed notebook) and ``task-N.log`` (the job's output).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")


class TaskPaths(NamedTuple):
    record: Path
    notebook: Path
    log: Path


def task_paths(run_dir: Path, index: int) -> TaskPaths:
    return TaskPaths(run_dir / f"task-{index}.json", run_dir / f"task-{index}.ipynb", run_dir / f"task-{index}.log")


def new_run_id(notebook: Path, now: datetime | None = None) -> str:
    """``<notebook stem>-<date>-<time>-<4 hex>``: sortable, unique, safe in paths and job names."""
    stem = re.sub(r"[^a-z0-9]+", "-", notebook.stem.lower()).strip("-")[:32] or "notebook"
    return f"{stem}-{(now or datetime.now()):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise ValueError(f"run {str(run_id)[:60]!r}: not a run id (see `aifactory runs`)")
    return run_id


def runs_root(home: Path, folder: str) -> Path:
    return home / folder


def create_run_dir(root: Path, run_id: str) -> Path:
    """The run's folder, 0700 (and the runs folder above it)."""
    root.mkdir(mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    run_dir = root / check_run_id(run_id)
    run_dir.mkdir(mode=0o700)
    return run_dir


def write_json(path: Path, data: dict) -> None:
    """Atomically (readers never see half a file), 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_dirs(root: Path) -> list[Path]:
    """The user's run folders, oldest first."""
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and RUN_ID_RE.match(d.name) and (d / "run.json").exists()]
    return sorted(found, key=lambda d: read_json(d / "run.json").get("submitted", ""))
