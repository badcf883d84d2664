"""The workshops service at ``/services/workshops/``: pages for instructors and a JSON API for the CLI.

Only members of the hub groups ``instructors`` and ``admins`` get in (the hub grants them
``access:services!service=workshops``; the pages check the groups again). An instructor sees
and manages the workshops they own; admins see all. Forms carry the hub's XSRF token; the JSON
API is for token-authenticated clients (``aifactory workshop ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from aifactory.courses import load_courses
from aifactory.services.hubservice import serve
from aifactory.site import Site, load_site
from aifactory.workshops.manager import HubAPI, WorkshopManager
from aifactory.workshops.plan import REQUEST_KEYS, WorkshopError
from aifactory.workshops.store import Store, Workshop

MANAGER_GROUPS = {"instructors", "admins"}
MAX_BODY = 64 * 1024
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
    autoescape=select_autoescape(["html"]),
)


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    def initialize(self, manager: WorkshopManager):
        self.manager = manager

    @property
    def hub_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_BASE_URL", "/") + "hub/"

    @property
    def prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/workshops/")

    def manager_user(self) -> dict:
        """The logged-in user, if an instructor or admin (403 otherwise)."""
        user = self.current_user
        if not MANAGER_GROUPS & set(user.get("groups") or []) and not user.get("admin"):
            raise web.HTTPError(403, "workshops are for instructors and admins")
        return user

    def is_admin(self, user: dict) -> bool:
        return bool(user.get("admin")) or "admins" in (user.get("groups") or [])

    def workshop(self, workshop_id: str, user: dict) -> Workshop:
        with self.manager.store.session() as session:
            workshop = self.manager.store.get(session, int(workshop_id))
            if workshop is not None:
                workshop.participants  # noqa: B018  (load before the session closes)
        if workshop is None:
            raise web.HTTPError(404, "no such workshop")
        if workshop.owner != user["name"] and not self.is_admin(user):
            raise web.HTTPError(403, f"workshop {workshop.name!r} belongs to another instructor")
        return workshop

    def visible_workshops(self, user: dict) -> list[Workshop]:
        with self.manager.store.session() as session:
            workshops = self.manager.store.all(session)
            for w in workshops:
                w.participants  # noqa: B018
        return [w for w in workshops if self.is_admin(user) or w.owner == user["name"]]

    def render(self, template: str, **context) -> None:
        self.finish(_templates.get_template(template).render(
            prefix=self.prefix, hub_prefix=self.hub_prefix, xsrf=self.xsrf_token.decode(), **context))

    def write_error(self, status_code: int, **kwargs) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        if self.request.path.startswith(url_path_join(self.prefix, "api")):
            self.finish({"error": message})
        else:
            self.finish(_templates.get_template("workshop_error.html").render(
                status=status_code, message=message, prefix=self.prefix, hub_prefix=self.hub_prefix))


def _form(handler: web.RequestHandler) -> dict:
    if len(handler.request.body) > MAX_BODY:
        raise web.HTTPError(413, "request too large")
    return {k: handler.get_body_argument(k) for k in handler.request.body_arguments if k != "_xsrf"}


class ListHandler(BaseHandler):
    """GET: my workshops and the form for a new one. POST: create one."""

    @web.authenticated
    def get(self):
        user = self.manager_user()
        self._page(user)

    def _page(self, user: dict, error: WorkshopError | None = None, values: dict | None = None):
        courses = load_courses(self.manager.site)[0]
        self.set_status(400 if error else 200)
        self.render("workshops.html", user=user, workshops=self.visible_workshops(user), courses=courses,
                    site=self.manager.site, error=error, values=values or {})

    @web.authenticated
    async def post(self):
        user = self.manager_user()
        values = _form(self)
        try:
            created = await self.manager.create(values, owner=user["name"])
        except WorkshopError as e:
            return self._page(user, e, values)
        self.render("workshop_created.html", workshop=created.workshop, credentials=created.credentials,
                    hub_url=self.request.protocol + "://" + self.request.host)


class WorkshopHandler(BaseHandler):
    @web.authenticated
    def get(self, workshop_id):
        user = self.manager_user()
        workshop = self.workshop(workshop_id, user)
        self.render("workshop.html", user=user, workshop=workshop, message=self.get_argument("message", ""))


class StatusHandler(BaseHandler):
    """The overview's rows as JSON; the page fetches it every few seconds."""

    @web.authenticated
    async def get(self, workshop_id):
        user = self.manager_user()
        workshop = self.workshop(workshop_id, user)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"workshop": workshop.as_dict(), "participants": await self.manager.status(workshop)}))


class ActionHandler(BaseHandler):
    """POST stop / extend / end, from the page (form) or the API (JSON)."""

    @web.authenticated
    async def post(self, workshop_id, action):
        user = self.manager_user()
        workshop = self.workshop(workshop_id, user)
        api = self.request.path.startswith(url_path_join(self.prefix, "api"))
        if api:
            body = _json_body(self)
        else:
            body = _form(self)
        try:
            message = await self.act(workshop, action, body)
        except WorkshopError as e:
            if api:
                self.set_status(400)
                return self.finish({"error": str(e), "field": e.field})
            return self.redirect(url_path_join(self.prefix, str(workshop.id)) + "?" +
                                 _query(message=f"Refused: {e}"))
        if api:
            return self.finish({"message": message, "workshop": workshop.as_dict()})
        self.redirect(url_path_join(self.prefix, str(workshop.id)) + "?" + _query(message=message))

    async def act(self, workshop: Workshop, action: str, body: dict) -> str:
        if workshop.state == "ended":
            raise WorkshopError("workshop", f"workshop {workshop.name!r} has ended")
        if action == "stop":
            user = body.get("user") or ""
            count = await self.manager.stop(workshop, [user] if user else None)
            return f"stopped {count} session(s)"
        if action == "extend":
            await self.manager.extend(workshop, body.get("minutes"))
            return f"the workshop now ends at {workshop.end:%H:%M}"
        if action == "end":
            await self.manager.end(workshop)
            return "the workshop has ended: sessions stopped, reservation deleted, walk-in logins disabled"
        raise web.HTTPError(404, f"unknown action {action[:20]!r}")


def _query(**params) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


def _json_body(handler: web.RequestHandler):
    if len(handler.request.body) > MAX_BODY:
        raise web.HTTPError(413, "request too large")
    try:
        return json.loads(handler.request.body or b"{}")
    except ValueError as e:
        raise web.HTTPError(400, "the body must be JSON") from e


class ApiListHandler(BaseHandler):
    @web.authenticated
    def get(self):
        user = self.manager_user()
        self.finish({"workshops": [w.as_dict() for w in self.visible_workshops(user)]})

    @web.authenticated
    async def post(self):
        user = self.manager_user()
        body = _json_body(self)
        try:
            created = await self.manager.create(body, owner=user["name"])
        except WorkshopError as e:
            self.set_status(400)
            return self.finish({"error": str(e), "field": e.field})
        self.set_status(201)
        self.finish({"workshop": created.workshop.as_dict(), "credentials": created.credentials})


class ApiWorkshopHandler(BaseHandler):
    @web.authenticated
    async def get(self, workshop_id):
        user = self.manager_user()
        workshop = self.workshop(workshop_id, user)
        self.finish({"workshop": workshop.as_dict(), "participants": await self.manager.status(workshop)})


def make_app(manager: WorkshopManager) -> web.Application:
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/workshops/")
    args = {"manager": manager}
    return web.Application(
        [
            (prefix, ListHandler, args),
            (prefix.rstrip("/"), web.RedirectHandler, {"url": prefix}),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(prefix, r"api/workshops"), ApiListHandler, args),
            (url_path_join(prefix, r"api/workshops/(\d+)"), ApiWorkshopHandler, args),
            (url_path_join(prefix, r"api/workshops/(\d+)/(stop|extend|end)"), ActionHandler, args),
            (url_path_join(prefix, r"(\d+)"), WorkshopHandler, args),
            (url_path_join(prefix, r"(\d+)/status"), StatusHandler, args),
            (url_path_join(prefix, r"(\d+)/(stop|extend|end)"), ActionHandler, args),
        ],
        cookie_secret=os.urandom(32),
        max_body_size=MAX_BODY,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--site", required=True)
    parser.add_argument("--db", required=True, help="SQLAlchemy URL of the workshops record")
    parser.add_argument("--helper", default="sudo -n /opt/aifactory/venv/bin/aifactory-privileged",
                        help="how to run the privileged helper (a sudo rule on a real cluster)")
    parser.add_argument("--housekeeping-seconds", type=int, default=60)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s workshops] %(message)s")
    site: Site = load_site(args.site)
    hub = HubAPI(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    manager = WorkshopManager(site, Store(args.db), hub, args.helper.split())
    serve(make_app(manager), "http://127.0.0.1:10102", periodic=(manager.housekeeping, args.housekeeping_seconds))


__all__ = ["REQUEST_KEYS", "main", "make_app"]

if __name__ == "__main__":
    main()
