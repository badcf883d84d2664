"""The single-user server's side of the wall-time warning (see :mod:`aifactory.walltime`)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from dataclasses import asdict, dataclass
from datetime import datetime

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop

from aifactory.slurm import queries
from aifactory.walltime import SCHEMA_ID, STATE_PATH

SCHEMA = {
    "$id": SCHEMA_ID,
    "version": "1",
    "title": "Session wall-time warning",
    "description": "The session's Slurm job reaches its time limit soon: save the open documents, tell the user.",
    "type": "object",
    "required": ["warned_at", "message"],
    "properties": {
        "warned_at": {"type": "string", "title": "when the warning arrived (ISO 8601)"},
        "end_time": {"type": "string", "title": "the job's end time (ISO 8601, node local), empty if unknown"},
        "minutes_left": {"type": "integer", "title": "whole minutes until the end, -1 if unknown"},
        "message": {"type": "string", "title": "the notice shown to the user"},
    },
}


@dataclass
class WalltimeWarning:
    warned_at: str
    end_time: str
    minutes_left: int
    message: str


def notice(end_time: datetime | None, now: datetime) -> WalltimeWarning:
    """The warning for a job that ends at end_time (None: Slurm did not say)."""
    if end_time is None:
        return WalltimeWarning(now.isoformat(timespec="seconds"), "", -1,
                               "This session reaches its wall-time limit in a few minutes. Your open "
                               "notebooks have been saved; the session stops at the limit.")
    minutes = max(math.ceil((end_time - now).total_seconds() / 60), 0)
    return WalltimeWarning(
        now.isoformat(timespec="seconds"), end_time.isoformat(timespec="seconds"), minutes,
        f"This session reaches its wall-time limit at {end_time:%H:%M} (in about {minutes} "
        f"minute{'s' if minutes != 1 else ''}). Your open notebooks have been saved; the session "
        "stops then. Start a new session to go on working.")


class WalltimeStateHandler(APIHandler):
    """``GET /aifactory/walltime``: the warning, once it came ({} before)."""

    # the lab asks when it starts and when its tab comes back: that is not the user's activity
    _track_activity = False

    @web.authenticated
    def get(self):
        warning = self.settings.get("aifactory_walltime_warning")
        self.finish(json.dumps(asdict(warning) if warning else {}))


async def announce(serverapp) -> None:
    """Read the job's end time, keep the warning and emit it to the connected lab pages."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    end_time = None
    try:
        job = await queries.session_job(job_id) if job_id else None
        end_time = job.end_time if job else None
    except (queries.SlurmUnavailable, queries.SlurmCommandError, ValueError) as e:
        serverapp.log.warning("wall-time warning: cannot read the end time of job %s: %s", job_id, e)
    warning = notice(end_time, datetime.now())
    serverapp.web_app.settings["aifactory_walltime_warning"] = warning
    serverapp.log.info("wall-time warning: %s", warning.message)
    serverapp.event_logger.emit(schema_id=SCHEMA_ID, data=asdict(warning))


def _load_jupyter_server_extension(serverapp) -> None:
    serverapp.event_logger.register_event_schema(SCHEMA)
    base_url = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [(url_path_join(base_url, STATE_PATH), WalltimeStateHandler)])

    pending: set[asyncio.Task] = set()  # the loop keeps only weak references to its tasks

    def on_warning() -> None:
        task = asyncio.get_running_loop().create_task(announce(serverapp))
        pending.add(task)
        task.add_done_callback(pending.discard)

    def take_signal() -> None:
        # in the running loop: the signal is handled between callbacks, never inside a request
        asyncio.get_running_loop().add_signal_handler(signal.SIGURG, on_warning)
        serverapp.log.info("wall-time warning: listening for URG (job %s)", os.environ.get("SLURM_JOB_ID", "-"))

    IOLoop.current().add_callback(take_signal)
