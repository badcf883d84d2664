"""The Python API of batch runs (``aifactory.runs``); the CLI and the lab panel use it.

Everything runs as the calling user: ``submit`` validates the notebook, the parameters and the
resources (with ``hub.options.validate`` against the user's own Slurm associations) before it
writes anything, then submits one job array; the other functions read the run folders and
Slurm's view (squeue for waiting/running tasks, sacct for ended ones).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aifactory.hub.options import OptionsError, SessionOptions, UserContext, validate
from aifactory.runs import notebook as nb
from aifactory.runs import script, store
from aifactory.site import Site, load_site
from aifactory.slurm import arrays
from aifactory.slurm import queries as slurm

ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "UNKNOWN")
VENV = "/opt/aifactory/venv"


class RunError(RuntimeError):
    """A run could not be submitted, found or cancelled; the message says why."""


@dataclass
class Task:
    """One parameter set of a run (one array task) as Slurm and the task's record see it."""

    index: int
    parameters: dict
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, UNKNOWN
    reason: str = ""  # why it waits, in words
    expected_start: datetime | None = None
    time_left: str = ""
    node: str = ""
    gpus: str = ""  # CUDA_VISIBLE_DEVICES inside the task
    exit_code: int | None = None
    elapsed: str = ""
    failed_cell: dict | None = None  # {"index", "first_line", "error", ...} of the failing cell
    results: dict | None = None  # the notebook's `results` dict
    notebook: Path | None = None  # the executed notebook
    record: dict = field(default_factory=dict)


@dataclass
class Run:
    """A submitted notebook: one job array, one task per parameter set."""

    run_id: str
    notebook: str  # the submitted notebook's path
    folder: Path
    job_id: str
    submitted: str
    options: dict  # the validated resources
    tasks: list[Task]

    @property
    def state(self) -> str:
        """PENDING, RUNNING, COMPLETED, FAILED or CANCELLED for the run as a whole."""
        states = [t.state for t in self.tasks]
        if any(s in ACTIVE_STATES for s in states):
            return "RUNNING" if any(s in ("RUNNING", "COMPLETING") for s in states) or \
                any(s not in ACTIVE_STATES for s in states) else "PENDING"
        if all(s == "COMPLETED" for s in states):
            return "COMPLETED"
        return "CANCELLED" if "CANCELLED" in states else "FAILED"

    @property
    def finished(self) -> bool:
        return all(t.state not in ACTIVE_STATES for t in self.tasks)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.state] = counts.get(task.state, 0) + 1
        return counts


def run_sync(coroutine):
    """Run a coroutine from sync code, also inside a running event loop (a Jupyter kernel)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _query(make_coroutine, attempts: int = 4):
    """A read-only Slurm query, retried while the controller restarts (it refuses for a few seconds)."""
    for attempt in range(attempts):
        try:
            return run_sync(make_coroutine())
        except slurm.SlurmUnavailable:
            if attempt == attempts - 1:
                raise
            time.sleep(2 + 3 * attempt)
    raise AssertionError("unreachable")


def _user() -> pwd.struct_passwd:
    return pwd.getpwuid(os.geteuid())


def _site(site: Site | str | Path | None) -> Site:
    if isinstance(site, Site):
        return site
    from aifactory.cli import default_site

    return load_site(site or default_site())


def _root(site: Site) -> Path:
    return store.runs_root(Path(_user().pw_dir), site.runs.folder)


async def user_context(username: str) -> UserContext:
    """What the user may use: their Slurm associations and the reservations (as the spawner asks)."""
    associations, reservations = await asyncio.gather(slurm.user_associations(username), slurm.reservations())
    return UserContext(username, associations, reservations)


def validate_resources(resources: dict | None, site: Site) -> SessionOptions:
    """The resources of a run, validated by the spawn form's validator."""
    try:
        ctx = _query(lambda: user_context(_user().pw_name))
    except (slurm.SlurmUnavailable, slurm.SlurmCommandError) as e:
        raise RunError(f"the cluster did not answer ({e}); nothing was submitted") from e
    try:
        return validate(dict(resources or {}), site, ctx)
    except OptionsError as e:
        raise RunError(f"resources: {e}") from e


def plan(notebook: str | Path, parameters: dict | None = None, sweep=None, site: Site | None = None
         ) -> tuple[dict, list[dict]]:
    """The checked notebook and one parameter dict per task; raises RunInputError naming the item."""
    site = _site(site)
    path = Path(notebook).expanduser().absolute()
    source = nb.load_notebook(path)
    fixed = {name: nb.parameter_value(name, value) for name, value in (parameters or {}).items()}
    sweeps = list(sweep.items()) if isinstance(sweep, dict) else list(sweep or [])
    sweeps = [(name, nb.sweep_values(name, values)) for name, values in sweeps]
    nb.check_parameters(source, [*fixed, *(name for name, _ in sweeps)])
    return source, nb.parameter_grid(fixed, sweeps, site.runs.max_array_tasks)


def submit(notebook: str | Path, parameters: dict | None = None, sweep=None, resources: dict | None = None,
           site: Site | str | None = None) -> Run:
    """Submit ``notebook`` as one Slurm job array, as the calling user; returns the new Run.

    ``parameters``: fixed values (``{"EPOCHS": 5}``); ``sweep``: ``{"LR": [0.1, 0.01]}`` or a list
    of (name, values) pairs, one task per combination; ``resources``: the spawn form's options
    (``partition``, ``account``, ``qos``, ``gpu_type``, ``gpus``, ``gpu_slices``, ``cpus``,
    ``memory_gb``, ``hours``). Bad input raises RunInputError or RunError before anything exists.
    """
    site = _site(site)
    source, tasks = plan(notebook, parameters, sweep, site)
    options = validate_resources(resources, site)
    path = Path(notebook).expanduser().absolute()
    run_id = store.new_run_id(path)
    folder = store.create_run_dir(_root(site), run_id)
    try:
        batch = script.render(options, run_id, str(folder), len(tasks), site.runs.array_throttle, VENV)
        store.write_json(folder / "notebook.ipynb", nb.with_results_record(source))
        run_plan = {"run_id": run_id, "notebook": str(path), "workdir": str(path.parent),
                    "kernel": nb.kernel_name(source), "tasks": tasks, "options": options.as_dict(),
                    "submitted": datetime.now().astimezone().isoformat(timespec="seconds"), "job_id": ""}
        store.write_json(folder / "run.json", run_plan)
        job_id = run_sync(arrays.submit_script(batch))
    except (OSError, ValueError, slurm.SlurmUnavailable, slurm.SlurmCommandError) as e:
        # nothing was submitted: leave no half-made run behind
        shutil.rmtree(folder, ignore_errors=True)
        raise RunError(f"sbatch refused the run: {e}") from e
    store.write_json(folder / "run.json", {**run_plan, "job_id": job_id})
    return show(run_id, site)


def _task(index: int, parameters: dict, folder: Path, queued: arrays.QueuedTask | None,
          accounted: arrays.AccountedTask | None) -> Task:
    paths = store.task_paths(folder, index)
    record = store.read_json(paths.record) if paths.record.exists() else {}
    final_record = record.get("state") in ("COMPLETED", "FAILED")
    if queued:
        state = queued.state
    elif accounted and accounted.state not in ACTIVE_STATES:
        state = accounted.state
    elif final_record:
        state = record["state"]
    else:
        state = accounted.state if accounted else "UNKNOWN"
    return Task(
        index=index, parameters=parameters, state=state,
        reason=(slurm.explain_reason(queued.reason) or queued.reason) if queued and queued.reason else "",
        expected_start=queued.expected_start if queued else None,
        time_left=queued.time_left if queued and queued.state == "RUNNING" else "",
        node=(queued.node if queued else "") or (accounted.node if accounted else "") or record.get("node", ""),
        gpus=record.get("gpus", ""), exit_code=record.get("exit_code"),
        elapsed=accounted.elapsed if accounted else "",
        failed_cell=record.get("failed_cell"), results=record.get("results"),
        notebook=paths.notebook if paths.notebook.exists() else None, record=record,
    )


async def _slurm_view(username: str, job_ids: list[str]):
    queued, accounted = await asyncio.gather(arrays.queued_tasks(username), arrays.accounted_tasks(job_ids))
    return ({(q.array_job_id, q.index): q for q in queued}, {(a.array_job_id, a.index): a for a in accounted})


def _runs(folders: list[Path]) -> list[Run]:
    plans = [(folder, store.read_json(folder / "run.json")) for folder in folders]
    try:
        job_ids = [p["job_id"] for _, p in plans if p["job_id"]]
        queued, accounted = _query(lambda: _slurm_view(_user().pw_name, job_ids))
    except (slurm.SlurmUnavailable, slurm.SlurmCommandError) as e:
        raise RunError(f"the cluster did not answer ({e}); try again in a minute") from e
    result = []
    for folder, run_plan in plans:
        job = run_plan["job_id"]
        tasks = [_task(i, params, folder, queued.get((job, i)), accounted.get((job, i)))
                 for i, params in enumerate(run_plan["tasks"])]
        result.append(Run(run_plan["run_id"], run_plan["notebook"], folder, job, run_plan["submitted"],
                          run_plan["options"], tasks))
    return result


def runs(site: Site | str | None = None) -> list[Run]:
    """The calling user's runs, oldest first, with their current state."""
    return _runs(store.run_dirs(_root(_site(site))))


def _folder(run_id: str, site: Site | str | None) -> Path:
    try:
        folder = _root(_site(site)) / store.check_run_id(run_id)
    except ValueError as e:
        raise RunError(str(e)) from None
    if not (folder / "run.json").exists():
        raise RunError(f"run {run_id!r}: no such run of yours (see `aifactory runs`)")
    return folder


def show(run_id: str, site: Site | str | None = None) -> Run:
    """One run with the state of each task."""
    return _runs([_folder(run_id, site)])[0]


def cancel(run_id: str, site: Site | str | None = None) -> Run:
    """Cancel every task of the run (scancel of the array job); returns the run as it is now."""
    run = show(run_id, site)
    if not run.finished:
        try:
            run_sync(arrays.cancel(run.job_id))
        except (slurm.SlurmUnavailable, slurm.SlurmCommandError) as e:
            raise RunError(f"scancel {run.job_id} failed: {e}") from e
    return show(run_id, site)


def collect(run_id: str, site: Site | str | None = None) -> list[dict]:
    """One row per task: ``task``, ``state``, the parameters, then the recorded ``results``.

    A result key that is also a parameter name comes as ``results.KEY``.
    """
    rows = []
    for task in show(run_id, site).tasks:
        row = {"task": task.index, "state": task.state, **task.parameters}
        for key, value in (task.results or {}).items():
            row[f"results.{key}" if key in row else key] = value
        rows.append(row)
    return rows


def wait(run_id: str, on_progress: Callable[[Run], None] | None = None, poll_seconds: float = 5.0,
         site: Site | str | None = None) -> Run:
    """Poll until every task has ended; ``on_progress`` gets the run whenever its task states change."""
    last = None
    while True:
        run = show(run_id, site)
        counts = run.counts()
        if counts != last and on_progress:
            on_progress(run)
        last = counts
        if run.finished:
            return run
        time.sleep(poll_seconds)
