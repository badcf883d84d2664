"""Running a hub-managed service (the catalogue, the workshops): listen where the hub says, stop
when the hub says."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable

from tornado import ioloop, web


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
