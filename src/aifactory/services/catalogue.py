"""The course catalogue: a hub-authenticated service at ``/services/catalogue/``.

Cards show title, level, duration, GPU need, objectives and prerequisites. "Start course"
links to the hub's spawn URL for a named server called after the course, with
``?opt-course=<slug>``; the spawner validates the course and its resources like any form input,
copies the notebooks into ``~/courses/<slug>`` and opens the first notebook.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from aifactory.courses import load_courses
from aifactory.services.hubservice import main_with_site, site_page_app
from aifactory.site import Site
from aifactory.slurm import queries as slurm

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
    autoescape=select_autoescape(["html"]),
)


def start_url(hub_prefix: str, username: str, slug: str) -> str:
    """Spawn (or open) the named server for a course."""
    return url_path_join(hub_prefix, "spawn", quote(username, safe=""), slug) + f"?opt-course={slug}"


def gpu_label(resources) -> str:
    """'1 GPU slice (shared)', '2 GPUs (h100)', 'CPU only'."""
    if resources.gpu_slices:
        label = f"{resources.gpu_slices} GPU slice" + ("s" if resources.gpu_slices > 1 else "") + " (shared)"
    elif resources.gpus:
        label = f"{resources.gpus} GPU" + ("s" if resources.gpus > 1 else "")
    else:
        return "CPU only"
    return label + ("" if resources.gpu_type == "any" else f" ({resources.gpu_type})")


def render_catalogue(site: Site, username: str, hub_prefix: str, running: set[str] | None = None,
                     show_overview: bool = False) -> str:
    courses, problems = load_courses(site)
    running = running or set()
    cards = [
        {
            "course": course,
            "start_url": start_url(hub_prefix, username, course.slug),
            "open_url": url_path_join("/user", quote(username, safe=""), course.slug, course.lab_path),
            "running": course.slug in running,
            "gpu_label": gpu_label(course.resources),
        }
        for course in courses.values()
    ]
    return _templates.get_template("catalogue.html").render(
        cards=cards, username=username, hub_prefix=hub_prefix, problems=len(problems),
        show_overview=show_overview
    )


class CatalogueHandler(HubOAuthenticated, web.RequestHandler):
    def initialize(self, site: Site):
        self.site = site

    @web.authenticated
    async def get(self):
        user = self.get_current_user()
        hub_prefix = os.environ.get("JUPYTERHUB_BASE_URL", "/") + "hub/"
        servers = set(user.get("servers", {}) or {})
        show_overview = bool(OVERVIEW_GROUPS & set(user.get("groups", [])))
        self.finish(render_catalogue(self.site, user["name"], hub_prefix, servers, show_overview))


OVERVIEW_GROUPS = {"instructors", "admins"}


async def running_sessions(hub_api_url: str, token: str) -> list[dict]:
    """Who is running: the hub's view (servers, courses, activity) joined with squeue's."""
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(
        url_path_join(hub_api_url, "users?state=active"),
        headers={"Authorization": f"token {token}"},
    )
    users = json.loads(response.body)
    jobs = slurm.parse_squeue_overview(await slurm.run(["squeue", "-h", "-o", slurm.OVERVIEW_FORMAT]))
    jobs_by_user: dict[str, list[dict]] = {}
    for job in jobs:
        if job["name"].startswith("jupyter"):
            jobs_by_user.setdefault(job["user"], []).append(job)
    rows = []
    for user in users:
        for name, server in (user.get("servers") or {}).items():
            server_job = next((j for j in jobs_by_user.get(user["name"], [])
                               if j["name"] == (f"jupyter-{name}" if name else "jupyter")), {})
            rows.append({
                "user": user["name"],
                "groups": ", ".join(user.get("groups", [])),
                "server": name or "(default)",
                "course": (server.get("user_options") or {}).get("course", ""),
                "ready": server.get("ready"),
                "last_activity": (server.get("last_activity") or "")[:19].replace("T", " "),
                **{k: server_job.get(k, "") for k in ("job_id", "account", "partition", "gres", "state",
                                                      "elapsed", "time_limit")},
            })
    return sorted(rows, key=lambda r: (r["user"], r["server"]))


class OverviewHandler(HubOAuthenticated, web.RequestHandler):
    """Instructors and admins: who is running, on what, for which course."""

    def initialize(self, site: Site) -> None:
        self.site = site

    @web.authenticated
    async def get(self):
        user = self.get_current_user()
        if not OVERVIEW_GROUPS & set(user.get("groups", [])):
            raise web.HTTPError(403, "the overview is for instructors and admins")
        # the viewer's own token: the hub lists only the servers the viewer may read (instructors:
        # the students group), not what the catalogue service could see
        rows = await running_sessions(self.hub_auth.api_url, self.hub_auth.get_token(self))
        hub_prefix = os.environ.get("JUPYTERHUB_BASE_URL", "/") + "hub/"
        self.finish(_templates.get_template("overview.html").render(
            rows=rows, username=user["name"], hub_prefix=hub_prefix))


def make_app(site: Site) -> web.Application:
    return site_page_app("/services/catalogue/", [("", CatalogueHandler), ("running", OverviewHandler)], site)


def main() -> None:
    main_with_site(make_app, "http://127.0.0.1:10101", __doc__)


if __name__ == "__main__":
    main()
