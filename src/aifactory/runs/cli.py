"""``aifactory submit`` and ``aifactory runs``: batch runs of notebooks from a terminal.

Thin: parses the command line into the API's arguments (``-p``/``--sweep`` values with
``notebook.parse_value``/``parse_sweep``, ``--gpus [TYPE:]N``) and prints what the API returns.
"""

from __future__ import annotations

import csv
import re
import sys
import time

from aifactory.runs import api
from aifactory.runs.notebook import RunInputError, parameter_value, parse_sweep, parse_value

GPUS_RE = re.compile(r"^(?:(?P<type>[A-Za-z0-9][A-Za-z0-9_.-]{0,31}):)?(?P<count>\d{1,3})$")


def add_cli(sub) -> None:
    """Register ``submit`` and ``runs`` on the ``aifactory`` command's subparsers."""
    submit = sub.add_parser("submit", help="run a notebook as a Slurm batch job (papermill), or a sweep "
                                           "as one job array")
    submit.add_argument("notebook", help="the notebook (.ipynb) to run")
    submit.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a parameter of the notebook's 'parameters' cell (a Python literal or a "
                             "plain word)")
    submit.add_argument("--sweep", action="append", default=[], metavar="NAME=v1,v2,...",
                        help="run once per value; several --sweep flags run every combination")
    for flag, what in (("--partition", "Slurm partition"), ("--account", "Slurm account"), ("--qos", "QOS")):
        submit.add_argument(flag, default="", help=what + " (default: as on the spawn form)")
    submit.add_argument("--gpus", default=None, metavar="[TYPE:]N", help="whole GPUs, e.g. 1 or h100:1")
    submit.add_argument("--gpu-slices", type=int, default=None, metavar="N", help="GPU slices instead of GPUs")
    submit.add_argument("--cpus", type=int, default=None)
    submit.add_argument("--memory-gb", type=int, default=None)
    submit.add_argument("--hours", type=int, default=None)
    submit.add_argument("--wait", action="store_true", help="show progress until the run has ended")
    submit.set_defaults(func=cmd_submit)

    runs = sub.add_parser("runs", help="your batch runs: list, show, cancel, collect results")
    runs.set_defaults(func=cmd_list)
    actions = runs.add_subparsers(dest="runs_action")
    show = actions.add_parser("show", help="each task of a run: state, node, failing cell")
    show.add_argument("run_id")
    show.set_defaults(func=cmd_show)
    cancel = actions.add_parser("cancel", help="cancel every task of a run")
    cancel.add_argument("run_id")
    cancel.set_defaults(func=cmd_cancel)
    collect = actions.add_parser("collect", help="a table of each task's parameters and results")
    collect.add_argument("run_id")
    collect.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    collect.set_defaults(func=cmd_collect)


def resources_from_args(args) -> dict:
    """The spawn form's options from the flags given (absent flags take the form's defaults)."""
    resources = {key: getattr(args, key) for key in ("partition", "account", "qos") if getattr(args, key)}
    for key in ("cpus", "memory_gb", "hours", "gpu_slices"):
        if getattr(args, key) is not None:
            resources[key] = getattr(args, key)
    if args.gpus is not None:
        match = GPUS_RE.match(args.gpus)
        if not match:
            raise RunInputError("--gpus", f"{args.gpus[:40]!r}: expected N or TYPE:N (e.g. 1 or h100:1)")
        resources["gpus"] = int(match["count"])
        if match["type"]:
            resources["gpu_type"] = match["type"]
    return resources


def _site(args):
    from aifactory.site import SiteError, load_site

    try:
        return load_site(args.site)
    except SiteError as e:
        sys.exit(f"error: site file: {e}")


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def cmd_submit(args) -> int:
    site = _site(args)
    try:
        parameters = {}
        for name, text in args.parameter:
            if name in parameters:
                raise RunInputError(f"parameter {name}", "is given twice")
            parameters[name] = parameter_value(name, parse_value(text, f"parameter {name}"))
        sweeps = [parse_sweep(spec) for spec in args.sweep]
        run = api.submit(args.notebook, parameters, sweeps, resources_from_args(args), site)
    except (RunInputError, api.RunError) as e:
        print("nothing was submitted", file=sys.stderr)
        return _fail(e)
    o = run.options
    gpus = f", GPUs {o['gres']}" if o.get("gres") else ""
    print(f"Submitted run {run.run_id}: job array {run.job_id} with {len(run.tasks)} task(s) "
          f"on partition {o['partition']} (account {o['account']}{gpus})")
    print(f"  folder: {run.folder}")
    if not args.wait:
        print(f"  follow: aifactory runs show {run.run_id}")
        return 0

    def progress(current: api.Run) -> None:
        print(f"{time.strftime('%H:%M:%S')} run {current.run_id}: {_counts(current)}", flush=True)

    run = api.wait(run.run_id, progress, site=site)
    print_run(run)
    return 0 if run.state == "COMPLETED" else 1


def _detail(task: api.Task) -> str:
    if task.state == "PENDING":
        start = f", expected start {task.expected_start:%Y-%m-%d %H:%M}" if task.expected_start else ""
        return f"waiting: {task.reason or 'in the queue'}{start}"
    if task.state == "RUNNING":
        return f"on {task.node}, {task.time_left} left" if task.time_left else f"on {task.node}"
    if task.failed_cell:
        cell = task.failed_cell
        return f"failed in cell {cell['index']} ({cell['first_line']!r}): {cell['error']}"
    if task.state not in ("COMPLETED", "UNKNOWN"):
        return f"exit code {task.exit_code}" if task.exit_code is not None else task.record.get("error") or ""
    return f"{task.elapsed} on {task.node}" if task.elapsed else ""


def _counts(run: api.Run) -> str:
    return ", ".join(f"{n} {state.lower()}" for state, n in sorted(run.counts().items()))


def _run_detail(run: api.Run) -> str:
    """One line: the first failure, else the tasks' states and why the first waiting one waits."""
    for state in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "PENDING", "RUNNING"):
        task = next((t for t in run.tasks if t.state == state), None)
        if task:
            prefix = f"{_counts(run)}; " if len(run.tasks) > 1 else ""
            return f"{prefix}task {task.index}: {_detail(task)}"
    return _counts(run) if run.state == "CANCELLED" else ""


def print_run(run: api.Run) -> None:
    print(f"run {run.run_id}  job {run.job_id}  {run.state}  submitted {run.submitted}")
    print(f"  notebook: {run.notebook}\n  folder:   {run.folder}")
    for task in run.tasks:
        params = " ".join(f"{k}={v!r}" for k, v in task.parameters.items()) or "(defaults)"
        gpus = f" GPUs {task.gpus}" if task.gpus else ""
        print(f"  task {task.index}: {task.state:<10} {params}{gpus}  {_detail(task)}")


def cmd_list(args) -> int:
    try:
        runs = api.runs(_site(args))
    except api.RunError as e:
        return _fail(e)
    if not runs:
        print("no runs yet (aifactory submit NOTEBOOK)")
        return 0
    print(f"{'RUN':<44} {'JOB':>7} {'TASKS':>5} {'STATE':<10} DETAIL")
    for run in runs:
        print(f"{run.run_id:<44} {run.job_id:>7} {len(run.tasks):>5} {run.state:<10} {_run_detail(run)}")
    return 0


def cmd_show(args) -> int:
    try:
        print_run(api.show(args.run_id, _site(args)))
    except api.RunError as e:
        return _fail(e)
    return 0


def cmd_cancel(args) -> int:
    try:
        run = api.cancel(args.run_id, _site(args))
    except api.RunError as e:
        return _fail(e)
    print(f"cancelled run {run.run_id} (job array {run.job_id})")
    return 0


def cmd_collect(args) -> int:
    try:
        rows = api.collect(args.run_id, _site(args))
    except api.RunError as e:
        return _fail(e)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(_cell(row.get(c))) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_cell(row.get(c)).ljust(widths[c]) for c in columns))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        print(f"written {args.csv}")
    return 0


def _cell(value) -> str:
    return "" if value is None else str(value)
