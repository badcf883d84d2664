"""The hub's shared cache of Slurm answers: by age, by key, one query for callers that ask at once."""

from __future__ import annotations

import asyncio

from aifactory.slurm import cache


def test_answers_are_reused_until_too_old_and_concurrent_callers_share_one_query():
    calls = []

    async def fetch():
        calls.append(1)
        await asyncio.sleep(0.05)
        return len(calls)

    async def scenario():
        cache.forget()
        together = await asyncio.gather(*(cache.cached(("gpus",), 30, fetch) for _ in range(30)))
        assert together == [1] * 30 and len(calls) == 1
        assert await cache.cached(("gpus",), 30, fetch) == 1  # fresh enough
        assert await cache.cached(("gpus",), 0, fetch) == 2  # max_age 0: asked again
        assert await cache.cached(("associations", "t-student1"), 30, fetch) == 3  # another key
        cache.forget("associations")
        assert await cache.cached(("associations", "t-student1"), 30, fetch) == 4
        assert await cache.cached(("gpus",), 30, fetch) == 2

    asyncio.run(scenario())


def test_a_failed_query_is_not_cached_and_reaches_every_waiter():
    attempts = []

    async def broken():
        attempts.append(1)
        await asyncio.sleep(0.01)
        raise RuntimeError("slurmctld down")

    async def scenario():
        cache.forget()
        results = await asyncio.gather(*(cache.cached(("res",), 30, broken) for _ in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results) and len(attempts) == 1
        await asyncio.gather(cache.cached(("res",), 30, broken), return_exceptions=True)
        assert len(attempts) == 2

    asyncio.run(scenario())
