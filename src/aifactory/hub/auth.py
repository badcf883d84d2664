"""PAM login with throttling: per user and per client address, without starving other logins.

Stock ``PAMAuthenticator`` tries every password it is sent, in a pool of 4 threads; PAM's
fail delay (``pam_faildelay``, 3 s on Debian) holds a thread per wrong password, so 8 clients
sending wrong passwords make everyone's login wait seconds. Here:

- after ``max_failures_per_user`` failed logins of a user (or ``max_failures_per_address`` from
  one address) within ``failure_window_seconds``, further attempts are refused with 429 without
  asking PAM;
- an address has at most ``max_pending_per_address`` PAM calls in flight: one client cannot
  occupy the whole thread pool, so a real user's login always finds a free thread;
- a wrong password costs the client ``failure_delay_seconds`` on the event loop (asyncio
  sleep), not a thread.

The client address is ``request.remote_ip``: the proxy's ``X-Forwarded-For`` last hop, which a
client cannot forge.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque

from jupyterhub.auth import PAMAuthenticator
from tornado import web
from traitlets import Float, Integer, default

# bound the memory an attacker with many names or addresses can make us use
MAX_TRACKED_KEYS = 10000


class ThrottledPAMAuthenticator(PAMAuthenticator):
    max_failures_per_user = Integer(
        5, help="Failed logins of one user name within failure_window_seconds before its logins are refused.",
    ).tag(config=True)

    max_failures_per_address = Integer(
        50, help="Failed logins from one client address within failure_window_seconds before it is refused "
        "(generous: a campus behind one NAT address shares it).",
    ).tag(config=True)

    failure_window_seconds = Float(
        300.0, help="How long a failed login counts against its user name and client address.",
    ).tag(config=True)

    failure_delay_seconds = Float(
        1.0, help="Seconds a wrong password waits before its answer (on the event loop, not a thread).",
    ).tag(config=True)

    max_pending_per_address = Integer(
        4, help="PAM checks one client address may have in flight; more are refused with 429.",
    ).tag(config=True)

    @default("executor_threads")
    def _executor_threads_default(self):
        # PAM's fail delay holds a thread per wrong password in flight
        return 32

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._pending: dict[str, int] = defaultdict(int)

    def _recent_failures(self, key: tuple[str, str], now: float) -> int:
        failures = self._failures.get(key)
        if failures is None:
            return 0
        while failures and failures[0] <= now - self.failure_window_seconds:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return 0
        return len(failures)

    def _record_failure(self, key: tuple[str, str], now: float) -> None:
        if key not in self._failures and len(self._failures) >= MAX_TRACKED_KEYS:
            # forget the entry whose last failure is oldest
            oldest = min(self._failures, key=lambda k: self._failures[k][-1] if self._failures[k] else 0)
            del self._failures[oldest]
        self._failures[key].append(now)

    def _throttled(self, username: str, address: str, now: float) -> str:
        if self._recent_failures(("user", username), now) >= self.max_failures_per_user:
            return "this user"
        if self._recent_failures(("address", address), now) >= self.max_failures_per_address:
            return "your address"
        return ""

    def _refuse(self, why: str, username: str, address: str):
        self.log.warning("Login throttled (%s) for %r from %s", why, username[:32], address)
        raise web.HTTPError(429, f"Too many failed logins for {why}; try again in a few minutes.")

    async def authenticate(self, handler, data):
        username = str(data.get("username", ""))
        address = handler.request.remote_ip if handler is not None else ""
        now = time.monotonic()
        why = self._throttled(username, address, now)
        if why:
            self._refuse(why, username, address)
        if self._pending[address] >= self.max_pending_per_address:
            self._refuse("your address (a login from it is still being checked)", username, address)
        self._pending[address] += 1
        try:
            result = await super().authenticate(handler, data)
        finally:
            self._pending[address] -= 1
            if not self._pending[address]:
                del self._pending[address]
        if result:
            self._failures.pop(("user", username), None)
            return result
        now = time.monotonic()
        self._record_failure(("user", username), now)
        self._record_failure(("address", address), now)
        await asyncio.sleep(self.failure_delay_seconds)
        return None
