"""Workshops: create, extend, stop, end; orchestration over the hub API, Slurm and the record.

Creating one takes four steps that must all happen or none: walk-in accounts, the Slurm
reservation (both through ``aifactory-privileged``), the hub users and group (hub API), and the
record. A failure in a later step undoes the earlier ones, so no half-made reservation or
account is left behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from aifactory.courses import load_courses
from aifactory.site import Site
from aifactory.slurm import queries as slurm
from aifactory.workshops.plan import WorkshopError, WorkshopPlan, check_extend, plan_workshop
from aifactory.workshops.privileged import user_exists
from aifactory.workshops.store import Participant, Store, Workshop

log = logging.getLogger("aifactory.workshops")
SLURM_TIME = "%Y-%m-%dT%H:%M:%S"


class HubAPI:
    """The few hub REST calls the workshops service makes, with its own token."""

    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/")
        self.token = token

    async def request(self, method: str, path: str, body=None, ok_missing: bool = False):
        try:
            response = await AsyncHTTPClient().fetch(
                self.api_url + path, method=method, headers={"Authorization": f"token {self.token}"},
                body=json.dumps(body) if body is not None else (None if method in ("GET", "DELETE") else "{}"),
                allow_nonstandard_methods=True, request_timeout=30)
        except HTTPClientError as e:
            if ok_missing and e.code == 404:
                return None
            detail = e.response.body.decode(errors="replace")[:300] if e.response else str(e)
            raise RuntimeError(f"hub API {method} {path}: {e.code} {detail}") from e
        return json.loads(response.body) if response.body else None

    async def users(self) -> dict[str, dict]:
        return {u["name"]: u for u in await self.request("GET", "/users") or []}


@dataclass
class Created:
    workshop: Workshop
    credentials: list[dict]  # walk-in user names and one-time passwords, shown once


class WorkshopManager:
    def __init__(self, site: Site, store: Store, hub: HubAPI, helper: list[str]):
        self.site = site
        self.store = store
        self.hub = hub
        self.helper = helper
        self.lock = asyncio.Lock()  # one change at a time: capacity checks see each other's bookings

    # ------------------------------------------------------------ helpers

    async def privileged(self, *args: str) -> str:
        argv = [*self.helper, *args]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            raise RuntimeError(message[-1] if message else f"{shlex.join(args[:1])} failed")
        return out.decode()

    def courses(self) -> dict:
        return load_courses(self.site)[0]

    async def known_users(self) -> set[str]:
        """Users that can take part: known to the hub and with a unix account (jobs run as them)."""
        return {name for name in await self.hub.users() if user_exists(name)}

    # ------------------------------------------------------------ create

    async def create(self, raw: dict, owner: str) -> Created:
        async with self.lock:
            with self.store.session() as session:
                if isinstance(raw, dict) and isinstance(raw.get("name"), str) \
                        and self.store.by_name(session, raw["name"]):
                    raise WorkshopError("name", f"a workshop called {raw['name']!r} exists already")
                booked = [_Booking.of(w) for w in self.store.all(session) if w.state != "ended"]
            plan = plan_workshop(raw, self.site, self.courses(), await self.known_users(), booked)
            return await self._create(plan, owner)

    async def _create(self, plan: WorkshopPlan, owner: str) -> Created:
        undo: list = []
        try:
            credentials = []
            if plan.walkins:
                expires = (plan.end + timedelta(days=1)).strftime("%Y-%m-%d")
                out = await self.privileged(
                    "walkin-create", "--workshop", plan.name, "--count", str(len(plan.walkins)),
                    "--account", self.site.workshops.account, "--qos", self.site.workshops.qos,
                    "--expires", expires)
                credentials = [json.loads(line) for line in out.splitlines() if line.strip()]
                undo.append(("walkin-remove", "--users", ",".join(plan.walkins)))
            await self._reserve(plan)
            undo.append(("reservation-delete", "--name", plan.reservation))
            if plan.walkins:
                await self.hub.request("POST", "/users", {"usernames": list(plan.walkins)})
                undo.append(("hub-users", *plan.walkins))
            await self.hub.request("POST", f"/groups/{plan.group}", {"users": list(plan.users)})
            undo.append(("hub-group", plan.group))
            workshop = self._record(plan, owner)
        except Exception as e:
            log.warning("creating workshop %s failed (%s): undoing %d step(s)", plan.name, e, len(undo))
            await self._undo(undo)
            if isinstance(e, WorkshopError):
                raise
            raise WorkshopError("cluster", str(e)) from e
        log.info("workshop %s created by %s: %d participants, reservation %s",
                 plan.name, owner, plan.size, plan.reservation)
        return Created(workshop, credentials)

    async def _reserve(self, plan: WorkshopPlan) -> None:
        ws = self.site.workshops
        args = ["reservation-create", "--name", plan.reservation,
                "--start", plan.start.strftime(SLURM_TIME), "--end", plan.end.strftime(SLURM_TIME),
                "--users", ",".join(plan.users), "--cores", str(plan.cores),
                "--partition", ws.partition or self.site.default_partition.name]
        if ws.reserve == "cores":
            split = await self._core_split(plan, args[args.index("--partition") + 1])
            if split:
                args[args.index("--cores") + 1] = ",".join(str(c) for _, c in split)
                args += ["--node-names", ",".join(n for n, _ in split)]
        if ws.reserve == "nodes":
            gpus = plan.size * plan.gpus or -(-plan.size * plan.gpu_slices // max(
                g.shards for g in self.site.gpu_types.values()))
            args += ["--nodes", str(max(1, -(-gpus // (ws.gpus_per_node or self.site.total_gpus))))]
        try:
            await self.privileged(*args)
        except RuntimeError as e:
            raise WorkshopError("cluster", f"Slurm refused the reservation: {e}") from e

    async def _core_split(self, plan: WorkshopPlan, partition: str) -> list[tuple[str, int]]:
        """Which nodes the participants' cores are reserved on: where their GPUs or slices are.

        Slurm 22.05 reserves cores, not GPUs; a reservation whose cores sit on a node without free
        slices would hold sessions that can never start. Participants are placed greedily on the
        partition's nodes by what each holds (slices, whole GPUs, or CPUs for CPU courses)."""
        try:
            nodes = [n for n in await slurm.nodes() if partition in n.partitions]
        except (slurm.SlurmUnavailable, slurm.SlurmCommandError):
            return []
        split, left = [], plan.size
        for node in nodes:
            if plan.gpu_slices:
                fits = node.slices // plan.gpu_slices
            elif plan.gpus:
                fits = node.gpus // plan.gpus
            else:
                fits = node.cpus // max(plan.cpus, 1)
            take = min(fits, left)
            if take:
                split.append((node.name, take * plan.cpus))
                left -= take
            if not left:
                return split
        return []  # does not fit node by node: let Slurm choose (and say no if it must)

    def _record(self, plan: WorkshopPlan, owner: str) -> Workshop:
        with self.store.session() as session:
            workshop = Workshop(
                name=plan.name, title=plan.title, course=plan.course, owner=owner, start=plan.start,
                end=plan.end, gpus=plan.gpus, gpu_slices=plan.gpu_slices, cpus=plan.cpus,
                memory_gb=plan.memory_gb, reservation=plan.reservation, group=plan.group)
            workshop.participants = [Participant(username=u, walkin=u in plan.walkins) for u in plan.users]
            session.add(workshop)
            session.commit()
            session.refresh(workshop)
            workshop.participants  # noqa: B018  (load them before the session closes)
            return workshop

    async def _undo(self, steps: list) -> None:
        for step in reversed(steps):
            try:
                if step[0] == "hub-users":
                    for user in step[1:]:
                        await self.hub.request("DELETE", f"/users/{quote(user)}", ok_missing=True)
                elif step[0] == "hub-group":
                    await self.hub.request("DELETE", f"/groups/{step[1]}", ok_missing=True)
                else:
                    await self.privileged(*step)
            except Exception as e:  # keep undoing the rest, and say what is left
                log.error("could not undo %s: %s", step[0], e)

    # ------------------------------------------------------------ actions

    async def extend(self, workshop: Workshop, minutes) -> Workshop:
        async with self.lock:
            minutes = check_extend(minutes, workshop)
            end = workshop.end + timedelta(minutes=minutes)
            try:
                await self.privileged("reservation-extend", "--name", workshop.reservation,
                                      "--end", end.strftime(SLURM_TIME), "--minutes", str(minutes))
            except RuntimeError as e:
                raise WorkshopError("minutes", f"Slurm refused to move the end: {e}") from e
            with self.store.session() as session:
                row = self.store.get(session, workshop.id)
                row.end = end
                session.commit()
            workshop.end = end
            log.info("workshop %s extended by %d min to %s", workshop.name, minutes, end)
            return workshop

    async def stop(self, workshop: Workshop, usernames: list[str] | None = None) -> int:
        """Stop the course servers of some or all participants; returns how many were running."""
        users = usernames if usernames is not None else workshop.usernames
        unknown = [u for u in users if u not in workshop.usernames]
        if unknown:
            raise WorkshopError("user", f"{unknown[0][:32]!r} is not a participant of {workshop.name!r}")
        hub_users = await self.hub.users()
        stopped = []
        for user in users:
            servers = (hub_users.get(user) or {}).get("servers") or {}
            # a walk-in's every server belongs to the workshop; others', only the course server
            names = list(servers) if user in workshop.walkins else [n for n in servers if n == workshop.course]
            for name in names:
                path = f"/users/{quote(user)}/servers/{quote(name)}" if name else f"/users/{quote(user)}/server"
                await self.hub.request("DELETE", path, ok_missing=True)
                stopped.append((user, name))
        await self._wait_stopped(stopped)
        return len(stopped)

    async def _wait_stopped(self, servers: list[tuple[str, str]], timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while servers and asyncio.get_running_loop().time() < deadline:
            users = await self.hub.users()
            servers = [(u, n) for u, n in servers if n in ((users.get(u) or {}).get("servers") or {})]
            if servers:
                await asyncio.sleep(1)

    async def end(self, workshop: Workshop) -> None:
        """Servers stopped, reservation deleted, walk-ins disabled (files kept), record closed."""
        async with self.lock:
            await self.stop(workshop)
            await self.privileged("reservation-delete", "--name", workshop.reservation)
            if workshop.walkins:
                await self.privileged("walkin-disable", "--users", ",".join(workshop.walkins))
                for user in workshop.walkins:  # their cookies and tokens go with the hub user
                    await self.hub.request("DELETE", f"/users/{quote(user)}", ok_missing=True)
            await self.hub.request("DELETE", f"/groups/{workshop.group}", ok_missing=True)
            with self.store.session() as session:
                row = self.store.get(session, workshop.id)
                row.state, row.ended = "ended", datetime.now()
                session.commit()
            workshop.state = "ended"
            log.info("workshop %s ended", workshop.name)

    async def housekeeping(self) -> None:
        """End workshops whose window has passed; remove walk-in accounts after the retention period."""
        now = datetime.now()
        with self.store.session() as session:
            workshops = self.store.all(session)
            for w in workshops:
                w.participants  # noqa: B018
        for workshop in workshops:
            try:
                if workshop.state != "ended" and workshop.end <= now:
                    await self.end(workshop)
                elif (workshop.state == "ended" and workshop.walkins and not workshop.walkins_removed
                      and workshop.ended
                      and now - workshop.ended > timedelta(days=self.site.workshops.keep_walkin_files_days)):
                    await self.privileged("walkin-remove", "--users", ",".join(workshop.walkins))
                    with self.store.session() as session:
                        self.store.get(session, workshop.id).walkins_removed = True
                        session.commit()
            except Exception as e:
                log.error("housekeeping of workshop %s: %s", workshop.name, e)

    # ------------------------------------------------------------ overview

    async def status(self, workshop: Workshop) -> list[dict]:
        """One row per participant: server state, Slurm reason, time left, notebooks, last activity."""
        hub_users = await self.hub.users()
        try:
            jobs = await slurm.user_jobs([u for u in workshop.usernames if user_exists(u)])
        except (slurm.SlurmUnavailable, slurm.SlurmCommandError) as e:
            log.warning("squeue for workshop %s: %s", workshop.name, e)
            jobs = []
        rows = []
        for participant in workshop.participants:
            user = participant.username
            servers = (hub_users.get(user) or {}).get("servers") or {}
            server = servers.get(workshop.course)
            job = next((j for j in jobs if j["user"] == user and j["name"] == f"jupyter-{workshop.course}"), {})
            if server is None:
                state = "stopped"
            elif server.get("ready"):
                state = "running"
            elif job.get("state") == "PENDING":
                state = "pending"
            else:
                state = "starting"
            reason = job.get("reason", "") if job.get("state") == "PENDING" else ""
            rows.append({
                "user": user,
                "walkin": participant.walkin,
                "state": state,
                "reason": reason + (f" ({slurm.explain_reason(reason)})" if slurm.explain_reason(reason) else ""),
                "job_id": job.get("job_id", ""),
                "reservation": job.get("reservation", "") if job.get("reservation") != "(null)" else "",
                "gres": job.get("gres", "").removeprefix("gres:"),
                "time_left": job.get("time_left", "") if state in ("running", "starting") else "",
                "opened": [n for n in participant.opened.split(",") if n],
                "changed": [n for n in participant.changed.split(",") if n],
                "last_activity": ((server or {}).get("last_activity") or "")[:19].replace("T", " "),
            })
        await self._notebook_activity(workshop, rows, hub_users)
        return rows

    async def _notebook_activity(self, workshop: Workshop, rows: list[dict], hub_users: dict) -> None:
        """Which course notebooks each running participant has open or changed (the lab's own API)."""
        notebooks = self.courses().get(workshop.course)
        if notebooks is None:
            return
        for row in rows:
            if row["state"] != "running":
                continue
            server = hub_users[row["user"]]["servers"][workshop.course]
            opened, changed = await _lab_activity(self.hub, server, workshop.course, notebooks.notebooks)
            if not opened and not changed:
                continue
            with self.store.session() as session:
                participant = next(p for p in self.store.get(session, workshop.id).participants
                                   if p.username == row["user"])
                participant.opened = ",".join(sorted(set(row["opened"]) | opened))
                participant.changed = ",".join(sorted(set(row["changed"]) | changed))
                row["opened"], row["changed"] = participant.opened.split(","), \
                    [n for n in participant.changed.split(",") if n]
                session.commit()


async def _lab_activity(hub: HubAPI, server: dict, course: str, notebooks: tuple[str, ...]):
    """Notebooks with a kernel (opened) and notebooks modified after the server started (changed)."""
    base = server["url"].rstrip("/")
    proxy = hub.api_url.rsplit("/hub/api", 1)[0]
    opened, changed = set(), set()
    try:
        client = AsyncHTTPClient()
        headers = {"Authorization": f"token {hub.token}"}
        sessions = json.loads((await client.fetch(f"{proxy}{base}/api/sessions", headers=headers,
                                                  request_timeout=5)).body)
        for s in sessions:
            name = (s.get("path") or "").rsplit("/", 1)[-1]
            if name in notebooks and (s.get("path") or "").startswith(f"courses/{course}/"):
                opened.add(name)
        listing = json.loads((await client.fetch(f"{proxy}{base}/api/contents/courses/{course}?content=1",
                                                 headers=headers, request_timeout=5)).body)
        # the course copy is written before JupyterLab starts: later changes are the student's
        status = json.loads((await client.fetch(f"{proxy}{base}/api/status", headers=headers,
                                                request_timeout=5)).body)
        started = status.get("started") or ""
        for item in listing.get("content") or []:
            if started and item.get("name") in notebooks and (item.get("last_modified") or "") > started:
                changed.add(item["name"])
    except (HTTPClientError, OSError, ValueError, KeyError) as e:
        log.debug("lab activity of %s: %s", base, e)
    return opened, changed


@dataclass(frozen=True)
class _Booking:
    """A booked workshop as the capacity check sees it."""

    name: str
    start: datetime
    end: datetime
    gpus: int
    gpu_slices: int
    cpus: int
    participants: tuple[str, ...]
    state: str

    @classmethod
    def of(cls, w: Workshop) -> _Booking:
        return cls(w.name, w.start, w.end, w.gpus, w.gpu_slices, w.cpus, tuple(w.usernames), w.state)
