"""The usage dashboard: a hub-authenticated service at ``/services/usage/``.

Admins (the hub's admins, the ``admins`` group) see every account; the managers named in the
site file's ``usage.managers`` see the accounts listed there and their sub-accounts; everybody
else gets a 403 page. ``?start=YYYY-MM-DD&end=YYYY-MM-DD`` picks the dates (both included;
default: the last 12 weeks); ``?format=csv`` gives the summary as CSV, ``&rows=jobs`` each job.
"""

from __future__ import annotations

import asyncio
import base64
import os
from datetime import date, timedelta
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuthenticated
from tornado import web

from aifactory.services import usage_report
from aifactory.services.hubservice import main_with_site, site_page_app
from aifactory.site import Site
from aifactory.slurm import usage
from aifactory.slurm.queries import SlurmCommandError, SlurmUnavailable

DEFAULT_DAYS = 12 * 7
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
    autoescape=select_autoescape(["html"]),
)


class UsageHandler(HubOAuthenticated, web.RequestHandler):
    def initialize(self, site: Site):
        self.site = site

    @property
    def hub_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_BASE_URL", "/") + "hub/"

    def is_admin(self, user: dict) -> bool:
        return (bool(user.get("admin")) or "admins" in (user.get("groups") or [])
                or user["name"] in self.site.groups.get("admins", ()))

    def date_range(self) -> tuple[date, date]:
        today = date.today()
        start = self.get_argument("start", "") or str(today - timedelta(days=DEFAULT_DAYS - 1))
        end = self.get_argument("end", "") or str(today)
        try:
            return usage.parse_range(start, end, today)
        except usage.UsageRangeError as e:
            raise web.HTTPError(400, f"date range: {e}") from None

    @web.authenticated
    async def get(self):
        user = self.current_user
        accounts = usage.visible_accounts(self.site, user["name"], self.is_admin(user))
        if accounts is not None and not accounts:
            raise web.HTTPError(403, "the usage dashboard is for admins and for the account managers named "
                                     "in the site file (usage.managers); you are neither")
        first, last = self.date_range()
        fmt = self.get_argument("format", "html")
        if fmt not in ("html", "csv"):
            raise web.HTTPError(400, f"format: {fmt!r} is not one of html, csv")
        rows = self.get_argument("rows", "summary")
        if rows not in ("summary", "jobs"):
            raise web.HTTPError(400, f"rows: {rows!r} is not one of summary, jobs")
        try:
            report = await usage_report.build_report(self.site, first, last, accounts)
        except (SlurmUnavailable, SlurmCommandError) as e:
            raise web.HTTPError(503, f"Slurm accounting did not answer: {e}") from None
        if fmt == "csv":
            write = usage_report.jobs_csv if rows == "jobs" else usage_report.summary_csv
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", f'attachment; filename="usage-{first}-{last}-{rows}.csv"')
            self.finish(write(report.rows))
            return
        # matplotlib is slow-ish and blocking: keep the service answering meanwhile
        charts = await asyncio.get_running_loop().run_in_executor(None, usage_report.dashboard_charts, report)
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/usage/")
        self.finish(_templates.get_template("usage.html").render(
            report=report, table=report.table(), username=user["name"], hub_prefix=self.hub_prefix,
            prefix=prefix, all_accounts=accounts is None, accounts=sorted(accounts or ()),
            totals=usage.totals(report.rows, "parent"),
            charts={name: base64.b64encode(png).decode() for name, png in charts.items()}))

    def write_error(self, status_code: int, **kwargs) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        if self.get_argument("format", "") == "csv":
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.set_header("X-Content-Type-Options", "nosniff")
            self.finish(f"{status_code}: {message}\n")
            return
        self.finish(_templates.get_template("usage_error.html").render(
            status=status_code, message=message, hub_prefix=self.hub_prefix))


def make_app(site: Site) -> web.Application:
    return site_page_app("/services/usage/", [("", UsageHandler)], site)


def main() -> None:
    main_with_site(make_app, "http://127.0.0.1:10103", __doc__)


if __name__ == "__main__":
    main()
