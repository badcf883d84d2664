"""AIFactorySpawner: batchspawner's SlurmSpawner with validated options and honest job states.

What it changes compared with stock SlurmSpawner:

- options arrive from the form, the REST API or a course link and pass the one validator
  (``options.validate``) in ``apply_user_options``; only ``SessionOptions`` reach the batch
  script (batchspawner's merge of raw ``user_options`` into the template is closed);
- squeue trouble (timeouts, controller down) is "unknown, retry", never "stopped";
- a queued job is not killed by ``start_timeout``: the site's ``max_queue_wait`` applies,
  with the Slurm reason and expected start shown while waiting;
- a job that dies while JupyterLab starts is noticed at once and reported with its sacct state;
- the port callback accepts only ``port`` (see ``handlers.py``).
"""

from __future__ import annotations

import asyncio
import html
import pwd
import shlex
import time
from datetime import datetime
from functools import cached_property

from batchspawner import JobStatus, SlurmSpawner
from tornado import web
from traitlets import Float, Integer, Unicode, default

from aifactory import security, walltime
from aifactory.courses import load_courses
from aifactory.hub import batchscript, handlers
from aifactory.hub.options import (
    OptionsError,
    SessionOptions,
    UserContext,
    normalise_form,
    render_form,
    validate,
)
from aifactory.site import USERNAME_RE, load_site
from aifactory.slurm import queries as slurm
from aifactory.slurm.cache import cached
from aifactory.slurm.poller import JobPoller, shared_poller
from aifactory.slurm.standing import user_standing

handlers.install()


class AIFactorySpawner(SlurmSpawner):
    site_file = Unicode(
        "",
        help="Path of the site file (hub_config/site.yaml): partitions, GPU types, limits, courses.",
    ).tag(config=True)

    venv = Unicode(
        "/opt/aifactory/venv",
        help="World-readable virtual environment on the compute nodes with jupyterlab and aifactory.",
    ).tag(config=True)

    job_site_file = Unicode(
        "",
        help="Site file as jobs see it (world-readable, from `aifactory courses publish`); "
        "default: site_file.",
    ).tag(config=True)

    max_queue_wait = Integer(
        600,
        help="Seconds a session may wait in the Slurm queue before the hub cancels it with a message.",
    ).tag(config=True)

    startup_timeout = Integer(
        120,
        help="Seconds JupyterLab may take to start once the Slurm job runs.",
    ).tag(config=True)

    slurm_timeout = Float(
        15.0,
        help="Seconds to wait for squeue/sacct before treating the state as unknown.",
    ).tag(config=True)

    slurm_poll_busy = Float(
        0.5,
        help="Seconds between the hub's shared squeue polls while any session is pending or starting.",
    ).tag(config=True)

    slurm_poll_idle = Float(
        10.0,
        help="Seconds between the hub's shared squeue polls while every session runs.",
    ).tag(config=True)

    context_cache_seconds = Float(
        30.0,
        help="How long the user's Slurm associations are cached for the form and validation (0: not at all, "
        "which also turns the other caches off).",
    ).tag(config=True)

    cluster_cache_seconds = Float(
        5.0,
        help="How long the cluster's reservations and free GPUs are cached, once for all users.",
    ).tag(config=True)

    standing_cache_seconds = Float(
        30.0,
        help="How long sshare/sacct answers (shares, fair-share factor, GPU-hours this month) are cached "
        "for the form and the GPU-hour check.",
    ).tag(config=True)

    workshops_db = Unicode(
        "",
        help="SQLAlchemy URL of the workshops record (written by the workshops service): a participant's "
        "course start during an open workshop lands in its reservation. Empty: no workshops.",
    ).tag(config=True)

    hub_tag = Unicode(
        "",
        help="Comment put on every session job (`aifactory-hub:<id>`): the reconcile service finds the "
        "hub's jobs by it and cancels those no server claims. Set by hub_config from the hub's state folder.",
    ).tag(config=True)

    listen_probe_interval = Float(
        0.05,
        help="Seconds between the hub's TCP probes of a server that sent its port, until it listens: "
        "start() returns when it does, so JupyterHub's own check (exponential back-off from 0.2 s) "
        "finds it up at the first try. 0: no probe.",
    ).tag(config=True)

    state_exechost_re = Unicode(r"\|([\w.-]+)$").tag(config=True)

    stop_confirm_seconds = Float(
        60.0,
        help="How long a stop retries scancel until Slurm confirms the job ended; after that the "
        "hub keeps retrying in the background every cancel_retry_seconds.",
    ).tag(config=True)

    cancel_retry_seconds = Float(
        30.0,
        help="Interval of the background scancel retries for jobs whose end Slurm has not confirmed.",
    ).tag(config=True)

    failed_server_keep_seconds = Float(
        30.0,
        help="A named server whose start failed is removed after this many seconds (its progress "
        "page can show the failure until then); one whose options were refused at once.",
    ).tag(config=True)

    @default("start_timeout")
    def _start_timeout_default(self):
        # the queue wait is enforced by query_job_status with a clear message
        return self.max_queue_wait + self.startup_timeout + 30

    @default("cmd")
    def _cmd_default(self):
        return [f"{self.venv}/bin/jupyterhub-singleuser"]

    def get_args(self):
        args = super().get_args()
        if not self.site.walltime_warning_minutes:
            return args
        # the server's half of the wall-time warning; the batch script joins this command with spaces
        if not batchscript.PATH_RE.match(str(walltime.LABEXTENSIONS_DIR)):
            raise ValueError(f"{walltime.LABEXTENSIONS_DIR} has characters a batch script cannot take")
        return [*args, *walltime.singleuser_args()]

    @default("startup_poll_interval")
    def _startup_poll_interval_default(self):
        # the start-up loop reads the shared poller's answer and the port the job sent: no
        # Slurm call per turn, so it can look often
        return 0.25

    @default("batchspawner_singleuser_cmd")
    def _singleuser_default(self):
        # our port wrapper: batchspawner-singleuser's, without importing JupyterHub in the job
        return f"{self.venv}/bin/aifactory-singleuser"

    @default("options_form")
    def _options_form_default(self):
        return AIFactorySpawner._render_options_form

    @default("options_from_form")
    def _options_from_form_default(self):
        return self._remember_form

    @default("apply_user_options")
    def _apply_user_options_default(self):
        return AIFactorySpawner._apply_validated_options

    session: SessionOptions | None = None
    _pending_since: float | None = None
    _submitted_job_id = ""
    _workshop_note = ""
    _start_failed = False
    _phases: dict[str, float] | None = None  # monotonic times of this start's phases (logged)
    _refused = False
    # the last form each user submitted, so a refused form comes back filled in (JupyterHub
    # re-renders the form of the default server even when a named server was refused)
    _previous_forms: dict[str, dict] = {}

    # ------------------------------------------------------------ site and user context

    @cached_property
    def site(self):
        if not self.site_file:
            raise web.HTTPError(500, "AIFactorySpawner.site_file is not configured")
        return load_site(self.site_file)

    @cached_property
    def workshop_store(self):
        if not self.workshops_db:
            return None
        from aifactory.workshops.store import open_store

        return open_store(self.workshops_db)

    def _check_username(self) -> str:
        name = self.user.name
        if not USERNAME_RE.match(name):
            raise web.HTTPError(400, f"user name {name!r} cannot be used for Slurm jobs")
        return name

    async def user_context(self) -> UserContext:
        """The user's Slurm associations, usable reservations, free GPUs and the courses."""
        username = self._check_username()
        # shared by all of the hub's spawners (a spawner object lives only as long as its server):
        # the user's own associations, and the cluster's reservations and free GPUs for everybody
        cluster_age = min(self.cluster_cache_seconds, self.context_cache_seconds)
        try:
            associations, reservations, (gpus, slices) = await asyncio.gather(
                cached(("associations", username), self.context_cache_seconds,
                       lambda: slurm.user_associations(username)),
                cached(("reservations",), cluster_age, slurm.reservations),
                cached(("gpus",), cluster_age, slurm.gpu_availability),
            )
            standing = await user_standing(username, [a.account for a in associations], self.site,
                                           min(self.standing_cache_seconds, self.context_cache_seconds))
        except (slurm.SlurmUnavailable, slurm.SlurmCommandError) as e:
            raise web.HTTPError(503, f"The cluster did not answer ({e}); please try again in a minute.") from e
        # reading every course.yaml takes ~50 ms: once per interval for everybody, off the event loop
        courses, _ = await cached(("courses", str(self.site.path)), self.context_cache_seconds,
                                  lambda: asyncio.to_thread(load_courses, self.site))
        return UserContext(username, associations, reservations, gpus, courses, slices,
                           self.workshop_store.bookings_for(username) if self.workshop_store else {}, standing)

    async def _render_options_form(self) -> str:
        try:
            ctx = await self.user_context()
        except web.HTTPError as e:
            return f'<div class="alert alert-danger">{html.escape(e.log_message)}</div>'
        if not ctx.associations:
            return ('<div class="alert alert-danger">You have no Slurm account yet. '
                    'Ask your instructor or the AI-factory admins to add you.</div>')
        previous = self._previous_forms.get(self.user.name) or self.user_options
        handler = getattr(self, "handler", None)
        link_options = getattr(handler, "confirm_options", None)
        if link_options and handler.request.method == "GET" and not handler._finished:
            # a link's options (course start): the form, filled in, is the confirmation page
            try:
                previous = normalise_form(link_options)
            except OptionsError as e:
                return f'<div class="alert alert-danger">{html.escape(str(e))}</div>'
            course = ctx.courses.get(previous.get("course"))
            if course:
                previous = {**course.resources.as_options(), **previous}
                booking = ctx.workshops.get(course.slug)
                if booking and booking.reservation in {r.name for r in ctx.usable_reservations()}:
                    # during a workshop the confirmation shows what the workshop gives
                    previous = {**previous, **booking.resources(), "reservation": booking.reservation}
        return render_form(self.site, ctx, previous=previous)

    def _remember_form(self, formdata):
        """Keep the submitted values so a refused form comes back filled in."""
        try:
            options = normalise_form(formdata)
        except OptionsError as e:
            raise web.HTTPError(400, str(e)) from e
        self._previous_forms[self.user.name] = options
        return options

    def options_from_query(self, query_data):
        return self._remember_form(query_data)

    async def _apply_validated_options(self, user_options) -> None:
        ctx = await self.user_context()
        try:
            session = validate(user_options, self.site, ctx)
        except OptionsError as e:
            self._start_failed = self._refused = True
            self.log.warning("Refused options for %s: %s", self._log_name, e)
            raise web.HTTPError(400, f"Invalid session options: {e}") from e
        self.session = session
        self._previous_forms.pop(self.user.name, None)
        self._workshop_note = self._explain_workshop(session, ctx)
        self.req_partition = session.partition
        self.req_account = session.account
        self.req_qos = session.qos
        self.req_runtime = session.time_limit
        self.req_nprocs = str(session.cpus)
        self.req_memory = f"{session.memory_gb}G"
        self.req_gres = session.gres
        self.req_reservation = session.reservation
        if session.course:
            self.default_url = "/" + ctx.courses[session.course].lab_path

    def _explain_workshop(self, session: SessionOptions, ctx: UserContext) -> str:
        """A line for the progress page: in the workshop's reservation, or why not (yet)."""
        booking = ctx.workshops.get(session.course)
        if booking and session.reservation == booking.reservation:
            return (f"Workshop {booking.title!r}: your session runs in its reservation "
                    f"{booking.reservation} until {booking.end:%H:%M}")
        if session.course and self.workshop_store:
            upcoming = self.workshop_store.upcoming_for(ctx.username, session.course)
            if upcoming:
                return (f"Your workshop {upcoming.title!r} starts at {upcoming.start:%Y-%m-%d %H:%M}; "
                        "until then this session queues like any other")
        return ""

    # ------------------------------------------------------------ the batch script

    async def _get_batch_script(self, **subvars):
        # batchspawner passes subvars merged with raw user_options: ignore them and build the
        # script from validated options and hub-controlled values only.
        if self.session is None:
            await self._apply_validated_options({})
        username = self._check_username()
        ctx = batchscript.JobContext(
            username=username,
            homedir=pwd.getpwnam(username).pw_dir,
            cmd=self.cmd_formatted_for_batch(),
            keepvars=sorted(self.get_env()),
            job_name=f"jupyter-{self.name}" if self.name else "jupyter",
            srun=self.req_srun,
            venv=self.venv,
            site_file=self.job_site_file or str(self.site.path),
            hub_tag=self.hub_tag,
            walltime_warning_seconds=self.site.walltime_warning_minutes * 60,
        )
        return batchscript.render(self.session, ctx)

    # ------------------------------------------------------------ job state

    def _exec_prefix(self) -> list[str]:
        return shlex.split(self.exec_prefix.format(username=self._check_username()))

    @property
    def poller(self) -> JobPoller:
        return shared_poller(busy_interval=self.slurm_poll_busy, idle_interval=self.slurm_poll_idle,
                             timeout=self.slurm_timeout)

    async def query_job_status(self):
        """The job's state from the hub's shared Slurm poller (one squeue for all sessions).

        Controller trouble and malformed answers are UNKNOWN, not NOTFOUND. Replaces
        batchspawner's per-session, shell-formatted ``batch_query_cmd`` (not used here).
        """
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        job_id = self.job_id
        result = await self.poller.state(job_id)
        if result.error:
            self.log.warning("Slurm state of job %s unknown (%s): will retry", job_id, result.error)
            self.job_status = f"UNKNOWN|{result.error}||"
            return JobStatus.UNKNOWN
        state = slurm.parse_job_state(result.line) if result.line else None
        self.job_status = result.line or ""
        if state is None:
            self.poller.forget(job_id)
            return JobStatus.NOTFOUND
        if state.running:
            self._pending_since = None
            self._mark("running")
            return JobStatus.RUNNING
        if state.pending:
            await self._enforce_queue_wait(state)
            return JobStatus.PENDING
        return JobStatus.NOTFOUND

    def job_state(self) -> slurm.JobState | None:
        return slurm.parse_job_state(self.job_status) if self.job_status else None

    async def _enforce_queue_wait(self, state: slurm.JobState) -> None:
        now = time.monotonic()
        if self._pending_since is None:
            self._pending_since = now
        waited = now - self._pending_since
        if waited <= self.max_queue_wait:
            return
        job_id = self.job_id
        reason = state.reason or "unknown"
        await self.cancel_batch_job()
        self.clear_state()
        explanation = slurm.explain_reason(reason)
        raise web.HTTPError(
            503,
            f"Your session (Slurm job {job_id}) waited {waited / 60:.0f} min in the queue, the most this "
            f"site allows, and was cancelled. Slurm's reason: {reason}"
            f"{f' ({explanation})' if explanation else ''}. Try fewer GPUs, another GPU type or partition, "
            f"or try again later.",
        )

    async def _death_report(self, job_id: str) -> str:
        record = await self.poller.record(job_id, attempts=3)
        home = pwd.getpwnam(self.user.name).pw_dir
        state = f" ({record.state}, exit code {record.exit_code})" if record else ""
        return (f"Your session's Slurm job {job_id} ended before JupyterLab was ready{state}. "
                f"The job's log is {home}/.aifactory-session-{job_id}.log")

    def _mark(self, phase: str) -> None:
        if self._phases is not None and phase not in self._phases:
            self._phases[phase] = time.monotonic()

    def port_registered(self) -> None:
        """The port callback arrived (handlers.py): the job runs; poll now rather than at the next
        interval, so that the start does not wait for the shared poll to say RUNNING."""
        self._mark("port")
        self.poller.poke()

    async def _wait_listening(self, host: str, port: int) -> None:
        """Until the server accepts connections (bounded by http_timeout; JupyterHub reports a
        server that never does)."""
        if not self.listen_probe_interval:
            return
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            except (OSError, TimeoutError):
                await asyncio.sleep(self.listen_probe_interval)
                continue
            writer.close()
            return

    def _log_phases(self) -> None:
        t = self._phases or {}
        t0 = t.get("start")
        if t0 is None:
            return

        def at(phase: str) -> str:
            return f"{t[phase] - t0:.3f} s" if phase in t else "-"

        self.log.info("Spawn phases of %s (job %s): sbatch called %s, returned %s; running seen %s; "
                      "port %s; listening %s", self._log_name, self.job_id, at("sbatch"), at("submitted"),
                      at("running"), at("port"), at("listening"))

    async def _silent_job_report(self, host: str) -> str:
        """A job that runs but whose server never called back: cancelled, with where to look."""
        job_id = self.job_id
        await self.stop()
        self.clear_state()
        home = pwd.getpwnam(self.user.name).pw_dir
        return (f"JupyterLab did not start within {self.startup_timeout} s of your session's Slurm job {job_id} "
                f"starting on {host or 'its node'}, so the job was cancelled. The job's log is "
                f"{home}/.aifactory-session-{job_id}.log")

    async def start(self):
        """batchspawner's start, watched: a job that dies before JupyterLab is up is reported."""
        self._check_username()
        self._pending_since = None
        self._submitted_job_id = ""
        self._phases = {"start": time.monotonic()}
        starting = asyncio.ensure_future(super().start())
        running_since = None
        try:
            while True:
                done, _ = await asyncio.wait({starting}, timeout=max(self.startup_poll_interval, 1.0))
                if done:
                    host, port = starting.result()
                    await self._wait_listening(host, port)
                    self._mark("listening")
                    self._log_phases()
                    return host, port
                if not self.job_id or self.port:
                    continue
                state = self.job_state()
                if state and state.running:
                    # super().start() stopped polling and waits for the port: keep watching the job
                    running_since = running_since or time.monotonic()
                    if await self.query_job_status() == JobStatus.NOTFOUND:
                        starting.cancel()
                        self.clear_state()
                        raise web.HTTPError(500, await self._death_report(self._submitted_job_id))
                    if time.monotonic() - running_since > self.startup_timeout:
                        starting.cancel()
                        raise web.HTTPError(500, await self._silent_job_report(state.host))
        except asyncio.CancelledError:
            starting.cancel()
            raise
        except Exception as e:
            self._start_failed = True
            # batchspawner: "The Jupyter batch job has disappeared while pending ... or died"
            if isinstance(e, RuntimeError) and "disappeared" in str(e) and self._submitted_job_id:
                raise web.HTTPError(500, await self._death_report(self._submitted_job_id)) from e
            raise

    async def submit_batch_script(self):
        # remember the id: batchspawner clears job_id before it reports a job that died
        self._mark("sbatch")
        self._submitted_job_id = await super().submit_batch_script()
        self._mark("submitted")
        return self._submitted_job_id

    async def progress(self):
        """Progress with Slurm's reason, the expected start and the queue-wait budget."""
        while True:
            state = self.job_state()
            note = f" ({self._workshop_note})" if self._workshop_note else ""
            if state is None:
                yield {"progress": 10, "message": "Submitting your session to Slurm..." + note}
            elif state.pending:
                waited = time.monotonic() - (self._pending_since or time.monotonic())
                parts = [f"Waiting in the Slurm queue (job {self.job_id})"]
                if state.reason:
                    explanation = slurm.explain_reason(state.reason)
                    parts.append(f"reason: {state.reason}" + (f" - {explanation}" if explanation else ""))
                if state.expected_start:
                    minutes = (state.expected_start - datetime.now()).total_seconds() / 60
                    parts.append(f"expected start {state.expected_start:%H:%M}"
                                 + (f" (in {minutes:.0f} min)" if minutes >= 1 else ""))
                parts.append(f"waited {waited:.0f} s of at most {self.max_queue_wait // 60} min")
                if self._workshop_note:
                    parts.append(self._workshop_note)
                yield {"progress": 30, "message": "; ".join(parts)}
            elif state.running:
                yield {"progress": 70, "message": f"Slurm job {self.job_id} running on {state.host}; "
                                                  "starting JupyterLab..."}
                if self.port:
                    return
            else:
                yield {"progress": 20, "message": f"Slurm state: {state.state} {state.reason}".strip()}
            await asyncio.sleep(1)

    async def _cancel_confirmed(self, job_id: str) -> bool:
        """One scancel, then a fresh shared poll: True once Slurm no longer lists the job as pending or
        running."""
        prefix = self._exec_prefix()
        try:
            await slurm.run([*prefix, "scancel", job_id], timeout=self.slurm_timeout)
        except (slurm.SlurmUnavailable, slurm.SlurmCommandError) as e:
            if not (isinstance(e, slurm.SlurmCommandError) and slurm.INVALID_JOB_RE.search(str(e))):
                self.log.warning("Cancelling job %s of %s not confirmed yet (%s)", job_id, self._log_name, e)
                return False
        # confirmed by a poll that started after the scancel
        result = await self.poller.state(job_id, fresh=True)
        if result.error:
            self.log.warning("Cancelling job %s of %s not confirmed yet (%s)", job_id, self._log_name, result.error)
            return False
        state = slurm.parse_job_state(result.line) if result.line else None
        if state is None or not (state.running or state.pending):
            self.poller.forget(job_id)
            return True
        return False

    async def stop(self, now=False):
        """scancel until Slurm confirms: a stop during a controller outage must not leave the job
        running unseen (batchspawner gives up after one failed scancel and forgets the job id)."""
        job_id = self.job_id
        if not job_id:
            return
        self.log.info("Stopping server job %s", job_id)
        deadline = time.monotonic() + (0 if now else self.stop_confirm_seconds)
        delay = 1.0
        while not await self._cancel_confirmed(job_id):
            if time.monotonic() >= deadline:
                self.log.error("Slurm has not confirmed the end of job %s of %s; retrying every %.0f s",
                               job_id, self._log_name, self.cancel_retry_seconds)
                asyncio.ensure_future(self._cancel_in_background(job_id))
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, 10.0)

    async def _cancel_in_background(self, job_id: str) -> None:
        attempts = 1
        while True:
            await asyncio.sleep(self.cancel_retry_seconds)
            attempts += 1
            if await self._cancel_confirmed(job_id):
                break
        self.log.info("Job %s of %s confirmed ended after %d background attempts", job_id, self._log_name,
                      attempts)

    def run_post_stop_hook(self):
        # a refused or failed start must not leave its named-server record behind: the records
        # count against named_server_limit_per_user even though nothing runs
        if self._start_failed and self.name:
            delay = 0.0 if self._refused else self.failed_server_keep_seconds
            asyncio.ensure_future(security.remove_named_server_record(self, delay))
        return super().run_post_stop_hook()

    async def poll(self):
        status = await self.query_job_status()
        if status in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.UNKNOWN):
            return None
        if self.job_id:
            asyncio.ensure_future(self._log_end(self.job_id))
        self.clear_state()
        return 1

    async def _log_end(self, job_id: str) -> None:
        """Why the job ended (sacct), for the hub's log: time limit, node failure, cancelled, ..."""
        record = await self.poller.record(job_id)
        ended = f"{record.state} (exit code {record.exit_code}, ran {record.elapsed})" if record else "unknown"
        self.log.info("Job %s of %s ended: %s; server stopped", job_id, self._log_name, ended)
