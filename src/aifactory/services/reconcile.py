"""Reconcile the hub with Slurm: no orphaned jobs, no ghost servers.

A hub-managed service (it runs as the hub's user, like the idle culler). Every session job carries
the hub's tag as its Slurm comment (``aifactory-hub:<id>``, see ``hubconfig.hub_tag``). At start
and every ``interval`` seconds one pass:

1. one ``squeue`` of every job with this hub's tag;
2. the hub's servers with their spawner state (the job id) from the REST API;
3. **orphans**, tagged jobs that no server claims (a stop during a controller outage, a spawn
   lost in a hub restart, a job whose server record was removed), are cancelled as their user;
4. **ghosts**, servers the hub counts as started whose job Slurm no longer lists, are stopped
   through the API (the hub's own poll would, later).

A job or server is judged only when it was found so in two passes in a row: a spawn in flight
names its job a moment after ``sbatch`` returned, and a server stopping drops its record a moment
after ``scancel``. A job whose server still claims it is left to that server (the hub adopts
its servers' jobs again after a restart). Controller trouble skips the pass: nothing is decided
on a missing answer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass, field

import requests

from aifactory.site import USERNAME_RE
from aifactory.slurm import queries as slurm

log = logging.getLogger("aifactory.reconcile")


@dataclass(frozen=True)
class HubServer:
    user: str
    name: str
    job_id: str  # "" while the spawn has not submitted its job yet
    pending: str  # "spawn", "stop" or ""
    ready: bool


@dataclass
class Decision:
    orphans: list[slurm.TaggedJob] = field(default_factory=list)
    ghosts: list[HubServer] = field(default_factory=list)
    jobs: int = 0
    servers: int = 0


class Ledger:
    """What the previous pass found unclaimed, so that one pass alone never decides."""

    def __init__(self) -> None:
        self._unclaimed: set[str] = set()
        self._ghosts: set[tuple[str, str, str]] = set()

    def decide(self, jobs: list[slurm.TaggedJob], servers: list[HubServer]) -> Decision:
        claimed = {s.job_id for s in servers if s.job_id}
        # a user's spawn that has not named its job yet may own any of their jobs: wait
        submitting = {s.user for s in servers if s.pending == "spawn" and not s.job_id}
        unclaimed = {j.job_id for j in jobs if j.job_id not in claimed and j.user not in submitting}
        listed = {j.job_id for j in jobs}
        ghosts = {(s.user, s.name, s.job_id) for s in servers
                  if s.job_id and not s.pending and s.job_id not in listed}
        decision = Decision(
            orphans=[j for j in jobs if j.job_id in unclaimed and j.job_id in self._unclaimed],
            ghosts=[s for s in servers if (s.user, s.name, s.job_id) in ghosts & self._ghosts],
            jobs=len(jobs),
            servers=len(servers),
        )
        self._unclaimed, self._ghosts = unclaimed, ghosts
        return decision


class HubClient:
    """The few REST calls the reconcile needs, with the service's token."""

    def __init__(self, api_url: str, token: str, timeout: float = 30.0):
        self.api_url = api_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        self.timeout = timeout

    def servers(self) -> list[HubServer]:
        found = []
        offset = 0
        while True:
            r = self.session.get(f"{self.api_url}/users", params={"state": "active", "offset": offset},
                                 headers={"Accept": "application/jupyterhub-pagination+json"},
                                 timeout=self.timeout)
            r.raise_for_status()
            page = r.json()
            for user in page["items"]:
                for name, server in (user.get("servers") or {}).items():
                    state = server.get("state") or {}
                    found.append(HubServer(user=user["name"], name=name, job_id=str(state.get("job_id") or ""),
                                           pending=server.get("pending") or "", ready=bool(server.get("ready"))))
            following = (page.get("_pagination") or {}).get("next")
            if not following:
                return found
            offset = following["offset"]

    def stop(self, server: HubServer) -> None:
        path = f"/users/{server.user}/servers/{server.name}" if server.name else f"/users/{server.user}/server"
        r = self.session.delete(f"{self.api_url}{path}", timeout=self.timeout)
        if r.status_code not in (202, 204, 400, 404):
            r.raise_for_status()


class Reconciler:
    def __init__(self, hub: HubClient, tag: str, exec_prefix: str = "sudo -n -u {username}",
                 slurm_timeout: float = 15.0):
        self.hub = hub
        self.tag = tag
        self.exec_prefix = exec_prefix
        self.slurm_timeout = slurm_timeout
        self.ledger = Ledger()
        self._last_summary: tuple[int, int, int, int] | None = None

    async def cancel(self, job: slurm.TaggedJob) -> bool:
        if not USERNAME_RE.match(job.user):
            log.error("job %s belongs to %r, not a user name this hub starts jobs for: left alone", job.job_id,
                      job.user)
            return False
        argv = [*self.exec_prefix.format(username=job.user).split(), "scancel", job.job_id]
        try:
            await slurm.run(argv, timeout=self.slurm_timeout)
        except (slurm.SlurmUnavailable, slurm.SlurmCommandError) as e:
            log.warning("cancelling orphaned job %s of %s failed (%s): next pass", job.job_id, job.user, e)
            return False
        return True

    async def run_once(self) -> Decision | None:
        """One pass; None when Slurm or the hub did not answer (nothing decided)."""
        try:
            jobs = await slurm.tagged_jobs(self.tag, timeout=self.slurm_timeout)
        except (slurm.SlurmUnavailable, slurm.SlurmCommandError) as e:
            log.warning("reconcile skipped: Slurm did not answer (%s)", e)
            return None
        try:
            servers = await asyncio.to_thread(self.hub.servers)
        except (requests.RequestException, ValueError, KeyError) as e:
            log.warning("reconcile skipped: the hub did not answer (%s)", e)
            return None
        decision = self.ledger.decide(jobs, servers)
        for job in decision.orphans:
            if await self.cancel(job):
                log.warning("cancelled orphaned job %s of %s (%s): no server of this hub claims it",
                            job.job_id, job.user, job.state)
        for server in decision.ghosts:
            log.warning("stopping ghost server %s/%s: its job %s is no longer in Slurm",
                        server.user, server.name, server.job_id)
            try:
                await asyncio.to_thread(self.hub.stop, server)
            except requests.RequestException as e:
                log.warning("stopping ghost server %s/%s failed (%s): next pass", server.user, server.name, e)
        summary = (decision.jobs, decision.servers, len(decision.orphans), len(decision.ghosts))
        # a line when something changed or was done, not one a minute for a quiet hub
        log.log(logging.INFO if summary != self._last_summary else logging.DEBUG,
                "reconcile: %d hub jobs, %d servers, %d orphaned jobs cancelled, %d ghost servers stopped", *summary)
        self._last_summary = summary
        return decision

    async def run_forever(self, interval: float) -> None:
        # at start, the second look comes soon: what a hub restart left behind is settled at once
        gap = min(interval, 10.0)
        while True:
            await self.run_once()
            await asyncio.sleep(gap)
            gap = interval


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="the comment of this hub's jobs")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between passes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s reconcile] %(message)s")
    hub = HubClient(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    asyncio.run(Reconciler(hub, args.tag).run_forever(args.interval))


if __name__ == "__main__":
    main()
