"""Usage figures as tables, CSV and charts: shared by the dashboard and ``aifactory usage report``.

Charts are drawn server-side with matplotlib (Agg, no pyplot: safe in the service's threads)
into PNG bytes. ``aifactory usage report --month 2026-11 --out DIR`` writes
``usage-2026-11-summary.csv`` (account x partition x week x kind), ``usage-2026-11-jobs.csv``
(each job's part in the month) and ``usage-2026-11.png`` (the charts), private to the caller.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aifactory.site import Site
from aifactory.slurm import usage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUMMARY_COLUMNS = ("account", "parent", "partition", "week", "kind", "jobs", "gpu_hours", "cpu_hours")
JOB_COLUMNS = ("job_id", "user", "account", "parent", "partition", "kind", "week", "seconds", "cpus", "gpus",
               "gpu_hours", "cpu_hours")
COLOURS = ["#12355b", "#e07a1f", "#3a8f5c", "#9b3d8a", "#c23b3b", "#5a7fa8", "#8c6d31", "#555555"]


@dataclass(frozen=True)
class UsageReport:
    site: Site
    first: date
    last: date
    rows: list[usage.UsageRow]  # what the viewer may see
    partner_share: dict[str, float | None]  # week -> partners' share of all GPU-hours
    overall_partner_share: float | None  # over the whole range; None: no GPU use

    @property
    def partner_account(self) -> str:
        return usage.partner_target(self.site)[0]

    @property
    def target(self) -> float:
        return usage.partner_target(self.site)[1]

    def table(self) -> list[dict]:
        """Per account: GPU-hours, CPU-hours, jobs and GPU-hours by kind."""
        by_account: dict[str, dict] = {}
        for row in self.rows:
            entry = by_account.setdefault(row.account, {
                "account": row.account, "parent": row.parent, "gpu_hours": 0.0, "cpu_hours": 0.0,
                "jobs": set(), **{f"gpu_{kind}": 0.0 for kind in usage.KINDS}})
            entry["gpu_hours"] += row.gpu_hours
            entry["cpu_hours"] += row.cpu_hours
            entry[f"gpu_{row.kind}"] += row.gpu_hours
            entry["jobs"].add(row.job_id)
        return [{**e, "jobs": len(e["jobs"])} for _, e in sorted(by_account.items(), key=lambda i: (i[1]["parent"], i[0]))]


async def build_report(site: Site, first: date, last: date, accounts: set[str] | None = None) -> UsageReport:
    """Query accounting for the dates (both included); ``accounts``: what the viewer may see (None: all)."""
    start, end = usage.range_datetimes(first, last)
    all_rows = usage.usage_rows(site, await usage.query_jobs(start, end), start, end)
    rows = [r for r in all_rows if accounts is None or r.account in accounts]
    total = sum(r.gpu_hours for r in all_rows)
    partner = sum(r.gpu_hours for r in all_rows if r.parent == usage.partner_target(site)[0])
    return UsageReport(site, first, last, rows, usage.partner_share_by_week(site, all_rows),
                       partner / total if total else None)


# ---------------------------------------------------------------- CSV


def summary_csv(rows: list[usage.UsageRow]) -> str:
    groups: dict[tuple, list] = defaultdict(lambda: [set(), 0.0, 0.0])
    for row in rows:
        group = groups[(row.account, row.parent, row.partition, row.week, row.kind)]
        group[0].add(row.job_id)
        group[1] += row.gpu_hours
        group[2] += row.cpu_hours
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for key, (jobs, gpu_hours, cpu_hours) in sorted(groups.items()):
        writer.writerow([*key, len(jobs), f"{gpu_hours:.6f}", f"{cpu_hours:.6f}"])
    return out.getvalue()


def jobs_csv(rows: list[usage.UsageRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(JOB_COLUMNS)
    for r in sorted(rows, key=lambda r: (r.week, r.job_id)):
        writer.writerow([r.job_id, r.user, r.account, r.parent, r.partition, r.kind, r.week, r.seconds, r.cpus,
                         f"{r.gpus:g}", f"{r.gpu_hours:.6f}", f"{r.cpu_hours:.6f}"])
    return out.getvalue()


# ---------------------------------------------------------------- charts


def _figure(**kwargs) -> Figure:
    # imported here: the `aifactory` command should not pay for matplotlib on every call
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _bars(ax, values: dict[str, float], title: str, unit: str) -> None:
    labels = list(values) or ["(none)"]
    numbers = list(values.values()) or [0]
    ax.barh(labels, numbers, color=COLOURS[0])
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(unit)
    for y, value in enumerate(numbers):
        ax.annotate(f"{value:.2f}", (value, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)


def _few_bars(ax, count: int) -> None:
    """Keep a bar or two from filling the whole plot: room for at least six."""
    pad = max(0.0, (6 - count) / 2)
    ax.set_xlim(-0.5 - pad, count - 0.5 + pad)


def _weekly(ax, rows: list[usage.UsageRow], column: int, title: str, unit: str) -> None:
    weeks = sorted({r.week for r in rows}) or ["(none)"]
    parents = sorted({r.parent for r in rows})
    bottom = [0.0] * len(weeks)
    for i, parent in enumerate(parents):
        per_week = usage.totals([r for r in rows if r.parent == parent], "week")
        heights = [per_week.get(w, (0.0, 0.0))[column] for w in weeks]
        ax.bar(weeks, heights, bottom=bottom, label=parent, color=COLOURS[i % len(COLOURS)])
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    _few_bars(ax, len(weeks))
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    if parents:
        ax.legend(fontsize=8)


def _share(ax, report: UsageReport) -> None:
    weeks = sorted(report.partner_share)
    shares = [100 * (report.partner_share[w] or 0) for w in weeks]
    ax.bar(weeks or ["(none)"], shares or [0], color=COLOURS[1], label=f"{report.partner_account}: actual")
    ax.axhline(100 * report.target, color=COLOURS[4], linestyle="--",
               label=f"target {100 * report.target:.0f} % (fair-share)")
    _few_bars(ax, max(len(weeks), 1))
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of all GPU-hours")
    ax.set_title(f"Share of GPU-hours: {report.partner_account} accounts vs. target, by week")
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.legend(fontsize=8)


def dashboard_charts(report: UsageReport) -> dict[str, bytes]:
    """The dashboard's charts, by name, as PNG."""
    charts = {}
    for key, title in (("account", "account"), ("partition", "partition")):
        figure = _figure(figsize=(10, 3.2))
        gpu_ax, cpu_ax = figure.subplots(1, 2)
        values = usage.totals(report.rows, key)
        _bars(gpu_ax, {k: v[0] for k, v in values.items()}, f"GPU-hours by {title}", "GPU-hours")
        _bars(cpu_ax, {k: v[1] for k, v in values.items()}, f"CPU-hours by {title}", "CPU-hours")
        charts[key] = _png(figure)
    figure = _figure(figsize=(10, 3.6))
    gpu_ax, cpu_ax = figure.subplots(1, 2)
    _weekly(gpu_ax, report.rows, 0, "GPU-hours by week", "GPU-hours")
    _weekly(cpu_ax, report.rows, 1, "CPU-hours by week", "CPU-hours")
    charts["week"] = _png(figure)
    figure = _figure(figsize=(10, 3.4))
    _share(figure.subplots(), report)
    charts["share"] = _png(figure)
    return charts


def report_chart(report: UsageReport) -> bytes:
    """All charts in one PNG, for the funders."""
    figure = _figure(figsize=(12, 14))
    figure.suptitle(f"{report.site.cluster_name}: usage {report.first} to {report.last}")
    axes = figure.subplots(4, 2)
    for row, key in ((0, "account"), (1, "partition")):
        values = usage.totals(report.rows, key)
        _bars(axes[row][0], {k: v[0] for k, v in values.items()}, f"GPU-hours by {key}", "GPU-hours")
        _bars(axes[row][1], {k: v[1] for k, v in values.items()}, f"CPU-hours by {key}", "CPU-hours")
    _weekly(axes[2][0], report.rows, 0, "GPU-hours by week", "GPU-hours")
    _weekly(axes[2][1], report.rows, 1, "CPU-hours by week", "CPU-hours")
    axes[3][1].remove()
    _share(axes[3][0], report)
    return _png(figure)


# ---------------------------------------------------------------- aifactory usage report


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_report(site: Site, month: str, out: Path, today: date | None = None) -> list[Path]:
    first, last = usage.parse_month(month, today)
    report = asyncio.run(build_report(site, first, last))
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = {out / f"usage-{month}-summary.csv": summary_csv(report.rows).encode(),
             out / f"usage-{month}-jobs.csv": jobs_csv(report.rows).encode(),
             out / f"usage-{month}.png": report_chart(report)}
    for path, data in files.items():
        _write_private(path, data)
    print(f"Usage {first} to {min(last, datetime.now().date())} ({site.cluster_name}):")
    for parent, (gpu_hours, cpu_hours) in usage.totals(report.rows, "parent").items():
        print(f"  {parent:20s} {gpu_hours:10.2f} GPU-hours {cpu_hours:10.2f} CPU-hours")
    share = report.overall_partner_share
    print(f"  {report.partner_account} share of GPU-hours: "
          f"{'no GPU use' if share is None else f'{100 * share:.1f} %'} (target {100 * report.target:.0f} %)")
    return list(files)


def cli(args, site: Site) -> int:
    from aifactory.slurm.queries import SlurmCommandError, SlurmUnavailable

    try:
        for path in write_report(site, args.month, Path(args.out)):
            print(f"wrote {path}")
    except usage.UsageRangeError as e:
        sys.exit(f"error: {e}")
    except (SlurmUnavailable, SlurmCommandError) as e:
        sys.exit(f"error: Slurm accounting did not answer: {e}")
    return 0


def add_cli(sub, handler) -> None:
    parser = sub.add_parser("usage", help="usage of the cluster from Slurm accounting")
    actions = parser.add_subparsers(dest="action", required=True)
    report = actions.add_parser("report", help="a month's GPU- and CPU-hours as CSV and a PNG chart")
    report.add_argument("--month", required=True, help="the month, YYYY-MM (e.g. 2026-11)")
    report.add_argument("--out", default=".", help="folder for the files (default: the current one)")
    parser.set_defaults(func=handler)
