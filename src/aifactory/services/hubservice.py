"""Running a hub-managed service (the catalogue, the workshops): listen where the hub says, stop
when the hub says."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Awaitable, Callable

from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import ioloop, web

from aifactory.site import Site, load_site


def serve(app: web.Application, default_url: str,
          periodic: tuple[Callable[[], Awaitable[None]], float] | None = None) -> None:
    """Listen on the port of ``$JUPYTERHUB_SERVICE_URL`` (loopback only) until SIGINT or SIGTERM."""
    loop = ioloop.IOLoop.current()
    # the hub stops services with SIGINT then SIGTERM; SIGINT may arrive ignored from a
    # background shell, so handle both explicitly
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loop.add_callback_from_signal(loop.stop))
    url = os.environ.get("JUPYTERHUB_SERVICE_URL", default_url)
    app.listen(int(url.rsplit(":", 1)[-1].split("/")[0]), "127.0.0.1")
    if periodic:
        ioloop.PeriodicCallback(periodic[0], periodic[1] * 1000).start()
    try:
        loop.start()
    except KeyboardInterrupt:
        pass


def site_page_app(default_prefix: str, pages: list[tuple], site: Site) -> web.Application:
    """A service's application: its pages (``(path below the prefix, handler)``, each given the
    site), the prefix without its slash redirected, and the hub's OAuth callback."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", default_prefix)
    return web.Application(
        [
            *((url_path_join(prefix, path) if path else prefix, handler, {"site": site}) for path, handler in pages),
            (prefix.rstrip("/"), web.RedirectHandler, {"url": prefix}),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        ],
        cookie_secret=os.urandom(32),
    )


def main_with_site(make_app: Callable[[Site], web.Application], default_url: str, doc: str | None) -> None:
    """``python -m aifactory.services.X --site SITE``: load the site file, serve the app."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--site", required=True)
    args = parser.parse_args()
    serve(make_app(load_site(args.site)), default_url)
