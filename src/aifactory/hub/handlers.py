"""The port callback, restricted.

batchspawner's ``/api/batchspawner`` handler sets *any* spawner attribute named in the JSON
body (``cmd``, ``exec_prefix``, ...), sent with the single-user token that the job's owner
can read. Ours accepts exactly one key, ``port``, as an integer in the TCP port range, sent
once, while the server is starting (a job cannot move a running session to another port), in a
body without duplicate keys.

``install`` also puts the handlers of ``security.py`` in place (confirmed spawn links, capped
request bodies).
"""

from __future__ import annotations

import json

from jupyterhub import apihandlers, handlers
from jupyterhub.apihandlers import APIHandler
from tornado import web

from aifactory.security import BodyLimit, install_routes, parse_json_strict

ROUTE = r"/api/batchspawner"


class PortCallbackHandler(BodyLimit, APIHandler):
    @web.authenticated
    def post(self):
        user = self.current_user
        token = self.get_auth_token()
        spawner = next((s for s in getattr(user, "spawners", {}).values() if s.api_token == token), None)
        if spawner is None:
            raise web.HTTPError(403, "this token belongs to no server of this user")
        data = parse_json_strict(self.request.body)
        if not isinstance(data, dict) or set(data) != {"port"}:
            raise web.HTTPError(400, "only the key 'port' is accepted")
        port = data["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
            raise web.HTTPError(400, "'port' must be an integer between 1024 and 65535")
        if spawner.pending != "spawn" or spawner.port:
            raise web.HTTPError(409, "the port is accepted once, while the server is starting")
        spawner.port = port
        if hasattr(spawner, "port_registered"):
            spawner.port_registered()
        self.set_status(201)
        self.finish(json.dumps({"message": "port registered"}))


def install() -> None:
    """Replace batchspawner's handler in JupyterHub's API routes (idempotent)."""
    import batchspawner.api  # noqa: F401  (registers the stock handler; we replace it)

    routes = apihandlers.default_handlers
    routes[:] = [r for r in routes if r[0] != ROUTE]
    routes.append((ROUTE, PortCallbackHandler))
    install_routes(handlers.default_handlers, routes)
