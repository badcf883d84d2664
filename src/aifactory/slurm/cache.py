"""A short-lived cache of Slurm answers, shared by every session of the hub.

Spawner objects come and go with their servers (JupyterHub drops a stopped one), so what the form
and the validator ask Slurm is kept here, by key: the user's associations per user, the cluster's
reservations and free GPUs once for everybody. Callers that ask for the same key while a query is
under way share its answer (thirty students starting at once cost one ``scontrol``, not thirty).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

T = TypeVar("T")

_answers: dict[Hashable, tuple[float, object]] = {}
_in_flight: dict[Hashable, asyncio.Future] = {}


async def cached(key: Hashable, max_age: float, fetch: Callable[[], Awaitable[T]]) -> T:
    """``fetch()``'s answer, at most ``max_age`` seconds old (0: always ask, but share a query under way)."""
    hit = _answers.get(key)
    if hit and max_age > 0 and time.monotonic() - hit[0] < max_age:
        return hit[1]  # type: ignore[return-value]
    running = _in_flight.get(key)
    if running is not None:
        return await asyncio.shield(running)
    future = asyncio.ensure_future(fetch())
    _in_flight[key] = future
    try:
        value = await asyncio.shield(future)
    finally:
        if _in_flight.get(key) is future:
            del _in_flight[key]
    _answers[key] = (time.monotonic(), value)
    return value


def forget(prefix: Hashable | None = None) -> None:
    """Drop cached answers (all, or those whose key starts with ``prefix``)."""
    for key in [k for k in _answers if prefix is None or (isinstance(k, tuple) and k[:1] == (prefix,))]:
        del _answers[key]
