"""The "Batch runs" section of the session panel (``aifactory.widgets.panel``).

A form submits a notebook (by default the one whose kernel shows the panel) as one batch run or a
sweep; a table lists the user's runs and refreshes itself in a background thread; each active run
has a Cancel button; a finished sweep's results are plotted, one numeric result against a swept
parameter. Everything goes through :class:`BatchRuns`, which the ``aifactory.runs`` module itself
implements (its ``runs``, ``submit``, ``cancel`` and ``collect``), so the panel and the command line
share one API and its validation: nothing is submitted unless ``runs.submit`` accepts it.
"""

from __future__ import annotations

import base64
import html
import io
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import ipywidgets as widgets

from aifactory.runs.api import Run, RunError
from aifactory.runs.notebook import NAME_RE, RunInputError, parse_sweep
from aifactory.slurm import queries

PARAMETER_ROWS = 3
MAX_LISTED_RUNS = 10
IDLE_FACTOR, IDLE_REFRESH_SECONDS = 6, 30  # refresh interval while none of the listed runs is active
SWEEP_HINT = "one value, or comma-separated values for a sweep (e.g. 0.05, 0.2, 0.5)"


class BatchRuns(Protocol):
    """What the panel needs from batch runs; the ``aifactory.runs`` module is one."""

    def runs(self) -> list[Run]:
        """The user's runs, oldest first, with their current state."""

    def submit(self, notebook: str, parameters: dict | None = None, sweep=None,
               resources: dict | None = None) -> Run:
        """Submit one job array; raises RunInputError / RunError (nothing submitted) on bad input."""

    def cancel(self, run_id: str) -> Run:
        """Cancel every task of the run."""

    def collect(self, run_id: str) -> list[dict]:
        """One row per task: ``task``, ``state``, the parameters, then the results."""


def parameters_from_rows(rows: Sequence[tuple[str, str]]) -> tuple[dict, dict]:
    """The form's (name, values) rows -> fixed parameters and sweeps, as ``runs.submit`` takes them.

    A row with one value sets that parameter for every task; several comma-separated values sweep
    it (values are Python literals or plain words, parsed as ``--sweep NAME=...`` is). Empty rows
    are skipped; RunInputError names the row or parameter that is wrong.
    """
    fixed, sweep = {}, {}
    for number, (name, text) in enumerate(rows, 1):
        name, text = name.strip(), text.strip()
        if not name and not text:
            continue
        if not NAME_RE.match(name):
            raise RunInputError(f"parameter row {number}", f"{name[:64]!r} is not a Python name"
                                if name else "has values but no parameter name")
        if name in fixed or name in sweep:
            raise RunInputError(f"parameter {name}", "is given in two rows")
        if not text:
            raise RunInputError(f"parameter {name}", "has no value")
        try:
            _, values = parse_sweep(f"{name}={text}")
        except RunInputError as e:
            # the parser names the command line's flag; the panel's user typed a row
            raise RunInputError(f"parameter {name}", str(e).removeprefix(f"{e.item}: ")) from None
        if len(values) == 1:
            fixed[name] = values[0]
        else:
            sweep[name] = values
    return fixed, sweep


def swept_parameters(run: Run) -> list[str]:
    """The parameters whose value differs between the run's tasks."""
    names = list(run.tasks[0].parameters) if run.tasks else []
    return [n for n in names if len({repr(t.parameters.get(n)) for t in run.tasks}) > 1]


def numeric_results(rows: list[dict], parameters: list[str]) -> list[str]:
    """Result keys with a number in some completed row (not the task, state or a parameter)."""
    keys = []
    for row in rows:
        for key, value in row.items():
            if key in ("task", "state") or key in parameters or key in keys:
                continue
            if row["state"] == "COMPLETED" and isinstance(value, int | float) and not isinstance(value, bool):
                keys.append(key)
    return keys


def plot_series(rows: list[dict], x: str, y: str, swept: list[str]) -> dict[str, list[tuple]]:
    """(x, y) points of the completed tasks, one series per combination of the other swept parameters."""
    series: dict[str, list[tuple]] = {}
    for row in rows:
        value = row.get(y)
        if row["state"] != "COMPLETED" or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        label = ", ".join(f"{name}={row[name]!r}" for name in swept if name != x)
        series.setdefault(label, []).append((row[x], value))
    numeric_x = all(isinstance(px, int | float) for points in series.values() for px, _ in points)
    return {label: sorted(points, key=lambda p: p[0]) if numeric_x else points for label, points in series.items()}


def describe_run(run: Run) -> str:
    """``RUNNING (1 running, 2 pending)`` for the table."""
    counts = run.counts()
    if len(run.tasks) == 1:
        return run.state
    return f"{run.state} ({', '.join(f'{n} {state.lower()}' for state, n in sorted(counts.items()))})"


class BatchRunsSection:
    """The widgets of the section; tests set the form's widgets, click, and read ``listed()``."""

    def __init__(self, batch_runs: BatchRuns, site, notebook: str = "", defaults: dict | None = None,
                 refresh_seconds: float = 5.0):
        self.batch_runs = batch_runs
        self.site = site
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._collected: dict[str, list[dict]] = {}  # finished runs do not change: collect once
        self.runs: list[Run] = []
        self.figure = None
        defaults = defaults or {}

        self.notebook_path = widgets.Text(value=notebook, description="Notebook",
                                          placeholder="path of the notebook, e.g. project/train.ipynb",
                                          layout=widgets.Layout(width="36em"))
        self.parameter_rows: list[tuple[widgets.Text, widgets.Text]] = []
        self.parameters_box = widgets.VBox([])
        for _ in range(PARAMETER_ROWS):
            self.add_parameter_row()
        add_row = widgets.Button(description="Add parameter", tooltip="another parameter row")
        add_row.on_click(lambda _: self.add_parameter_row())
        limits = site.limits
        partitions = list(site.partitions)
        partition = defaults.get("partition") if defaults.get("partition") in partitions \
            else site.default_partition.name
        self.partition = widgets.Dropdown(options=partitions, value=partition, description="Partition")
        self.gpus = widgets.BoundedIntText(value=defaults.get("gpus", 0) if site.partitions[partition].gpus else 0,
                                           min=limits["gpus"].min, max=limits["gpus"].max, description="GPUs")
        max_hours = min(limits["hours"].max, site.partitions[partition].max_hours)
        self.hours = widgets.BoundedIntText(value=min(limits["hours"].default, max_hours),
                                            min=limits["hours"].min, max=limits["hours"].max, description="Hours")
        self.account = widgets.Text(value=defaults.get("account", ""), description="Account",
                                    placeholder="your default account")
        self.partition.observe(self._partition_changed, names="value")
        self.submit_button = widgets.Button(description="Submit", button_style="primary",
                                            tooltip="submit the notebook as a batch run (a sweep: one job array)")
        self.submit_button.on_click(lambda _: self.submit())
        self.message = widgets.HTML(value="")
        self.table = widgets.VBox([widgets.HTML(value="Reading your runs ...")])
        self.cancel_buttons: dict[str, widgets.Button] = {}
        self._table_shown: tuple | None = None

        self.plot_run = widgets.Dropdown(options=[], description="Sweep")
        self.plot_x = widgets.Dropdown(options=[], description="Against")
        self.plot_y = widgets.Dropdown(options=[], description="Result")
        self.plot = widgets.Output()
        self.plot_run.observe(lambda _: self._choose_run(), names="value")
        self.plot_x.observe(lambda _: self.draw(), names="value")
        self.plot_y.observe(lambda _: self.draw(), names="value")
        self.results_box = widgets.VBox([])

        for widget, name in ((self.notebook_path, "notebook"), (self.partition, "partition"), (self.gpus, "gpus"),
                             (self.hours, "hours"), (self.submit_button, "submit"), (self.message, "message"),
                             (self.table, "table"), (self.plot_y, "plot-result"), (self.plot, "plot")):
            widget.add_class(f"aif-runs-{name}")
        form = widgets.VBox([
            self.notebook_path,
            widgets.HTML(value=f"Parameters: name, and {html.escape(SWEEP_HINT)}"),
            self.parameters_box, add_row,
            widgets.HBox([self.partition, self.gpus, self.hours, self.account]),
            self.submit_button, self.message])
        self.widget = widgets.VBox([widgets.HTML(value="<b>Batch runs</b>"), form, self.table, self.results_box])
        threading.Thread(target=self._poll, name="aifactory-panel-runs", daemon=True).start()

    # ------------------------------------------------------------ form

    def add_parameter_row(self) -> None:
        number = len(self.parameter_rows)
        name = widgets.Text(placeholder="name, e.g. LR", layout=widgets.Layout(width="12em"))
        values = widgets.Text(placeholder=SWEEP_HINT, layout=widgets.Layout(width="28em"))
        name.add_class(f"aif-runs-param-name-{number}")
        values.add_class(f"aif-runs-param-values-{number}")
        self.parameter_rows.append((name, values))
        self.parameters_box.children = [*self.parameters_box.children, widgets.HBox([name, values])]

    def _partition_changed(self, change) -> None:
        if not self.site.partitions[change["new"]].gpus:
            self.gpus.value = 0

    def resources(self) -> dict:
        resources = {"partition": self.partition.value, "gpus": self.gpus.value, "hours": self.hours.value}
        if self.account.value.strip():
            resources["account"] = self.account.value.strip()
        return resources

    def submit(self) -> Run | None:
        """Submit what the form says; a refused input is shown, and nothing is submitted."""
        notebook = self.notebook_path.value.strip()
        self.message.value = "Submitting ..."
        try:
            if not notebook:
                raise RunInputError("notebook", "no path given")
            fixed, sweep = parameters_from_rows([(n.value, v.value) for n, v in self.parameter_rows])
            path = Path(notebook).expanduser()
            run = self.batch_runs.submit(str(path if path.is_absolute() else Path.home() / path),
                                         parameters=fixed, sweep=sweep, resources=self.resources())
        except (RunInputError, RunError) as e:
            self.message.value = f"<span style='color:#b00'>Not submitted: {html.escape(str(e))}</span>"
            return None
        self.message.value = (f"Submitted run {html.escape(run.run_id)}: job array {html.escape(run.job_id)} "
                              f"with {len(run.tasks)} task(s) on partition "
                              f"{html.escape(str(run.options.get('partition', '')))}.")
        self.refresh()
        self._wake.set()
        return run

    def cancel(self, run_id: str) -> None:
        try:
            run = self.batch_runs.cancel(run_id)
        except RunError as e:
            self.message.value = f"<span style='color:#b00'>Not cancelled: {html.escape(str(e))}</span>"
            return
        self.message.value = f"Cancelled run {html.escape(run.run_id)} (job array {html.escape(run.job_id)})."
        self.refresh()

    # ------------------------------------------------------------ table

    def _poll(self) -> None:
        # a thread, like the panel's clock: the table stays current while cells run; while no run
        # is active it asks Slurm less often (every open panel of every user polls squeue and sacct),
        # and a submission wakes it
        while not self._stop.is_set():
            self.refresh()
            active = any(not run.finished for run in self.runs)
            self._wake.wait(self.refresh_seconds if active
                            else max(self.refresh_seconds * IDLE_FACTOR, IDLE_REFRESH_SECONDS))
            self._wake.clear()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def refresh(self) -> None:
        """Read the runs again (squeue/sacct through the runs API) and update table and plot."""
        with self._lock:
            try:
                runs = list(self.batch_runs.runs())
            except (RunError, queries.SlurmUnavailable, queries.SlurmCommandError) as e:
                self._show_table([widgets.HTML(value=f"Slurm did not answer: {html.escape(str(e))}")], ("error", str(e)))
                return
            self.runs = list(reversed(runs))[:MAX_LISTED_RUNS]
            self._show_runs()
            self._show_results()

    def _show_table(self, children: list, shown: tuple) -> None:
        # rebuilt only when something changed: a page does not flicker every few seconds
        if shown != self._table_shown:
            self._table_shown = shown
            self.table.children = children

    def _show_runs(self) -> None:
        if not self.runs:
            self._show_table([widgets.HTML(value="No batch runs yet.")], ("none",))
            return
        columns = {"Run": "24em", "Job": "6em", "Notebook": "14em", "State": "16em"}
        header = widgets.HBox([widgets.HTML(value=f"<b>{c}</b>", layout=widgets.Layout(width=w))
                               for c, w in columns.items()])
        rows, shown, self.cancel_buttons = [header], [], {}
        for run in self.runs:
            values = (run.run_id, run.job_id, Path(run.notebook).name, describe_run(run))
            cells = [widgets.Label(value=v, layout=widgets.Layout(width=w))
                     for v, w in zip(values, columns.values(), strict=True)]
            if not run.finished:
                button = widgets.Button(description="Cancel", button_style="warning",
                                        tooltip=f"scancel job array {run.job_id}")
                button.on_click(lambda _, run_id=run.run_id: self.cancel(run_id))
                self.cancel_buttons[run.run_id] = button
                cells.append(button)
            row = widgets.HBox(cells)
            row.add_class("aif-runs-row")
            rows.append(row)
            shown.append((*values, run.finished))
        self._show_table(rows, tuple(shown))

    def listed(self) -> list[dict]:
        """The table as shown: run, job, notebook, state of each row (read from its widgets)."""
        return [dict(zip(("run_id", "job_id", "notebook", "state"), (c.value for c in row.children[:4]),
                         strict=True))
                for row in self.table.children if "aif-runs-row" in row._dom_classes]

    # ------------------------------------------------------------ results of sweeps

    def _show_results(self) -> None:
        sweeps = [run for run in self.runs if run.finished and swept_parameters(run)
                  and any(t.results for t in run.tasks)]
        options = [run.run_id for run in sweeps]
        if options == list(self.plot_run.options):
            return
        newest = options[0] if options and options[0] not in self.plot_run.options else None
        _choices(self.plot_run, options)
        if newest:
            self.plot_run.value = newest  # a sweep that just finished is the one to look at
        self.results_box.children = [
            widgets.HTML(value="<b>Results of a sweep</b>"),
            widgets.HBox([self.plot_run, self.plot_x, self.plot_y]), self.plot] if options else []

    def _choose_run(self) -> None:
        run = next((r for r in self.runs if r.run_id == self.plot_run.value), None)
        if run is None:
            return
        if run.run_id not in self._collected:
            try:
                self._collected[run.run_id] = self.batch_runs.collect(run.run_id)
            except RunError as e:
                self.message.value = f"Results of {html.escape(run.run_id)} not read: {html.escape(str(e))}"
                return
        rows, swept = self._collected[run.run_id], swept_parameters(run)
        keys = numeric_results(rows, list(run.tasks[0].parameters))
        _choices(self.plot_x, swept)
        _choices(self.plot_y, keys)
        self.draw()

    def draw(self) -> None:
        """Plot the chosen result against the chosen swept parameter (matplotlib, as a PNG)."""
        run_id, x, y = self.plot_run.value, self.plot_x.value, self.plot_y.value
        run = next((r for r in self.runs if r.run_id == run_id), None)
        if not (run and x and y and run_id in self._collected):
            self.plot.outputs = ()
            return
        from matplotlib.figure import Figure

        series = plot_series(self._collected[run_id], x, y, swept_parameters(run))
        figure = Figure(figsize=(5.5, 3.2), layout="constrained")
        axes = figure.add_subplot()
        for label, points in series.items():
            axes.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label or None)
        if any(series):
            axes.legend(fontsize="small")
        axes.set_xlabel(x)
        axes.set_ylabel(y)
        axes.set_title(f"{y} against {x}: run {run_id}", fontsize="small")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        self.figure = figure
        self.plot.outputs = ({"output_type": "display_data", "metadata": {},
                              "data": {"image/png": base64.b64encode(buffer.getvalue()).decode(),
                                       "text/plain": f"<plot of {y} against {x} for run {run_id}>"}},)


def _choices(dropdown: widgets.Dropdown, options: list[str]) -> None:
    """New options; the chosen one stays when it is still there, else the first (a Dropdown picks none)."""
    chosen = dropdown.value
    dropdown.options = options
    dropdown.value = chosen if chosen in options else (options[0] if options else None)


def current_notebook(environ: dict | None = None, user_namespace: Callable[[], dict] | None = None) -> str:
    """The notebook of this kernel: ``JPY_SESSION_NAME`` (set by Jupyter Server), else ``__session__``."""
    environ = os.environ if environ is None else environ
    path = environ.get("JPY_SESSION_NAME", "")
    if not path and user_namespace:
        path = str(user_namespace().get("__session__", "") or "")
    if not path.endswith(".ipynb"):
        return ""
    home = str(Path.home())
    return path.removeprefix(home + "/") if path.startswith(home + "/") else path
