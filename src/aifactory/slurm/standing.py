"""Where a user stands in each of their accounts: shares, fair-share factor, GPU-hours this month.

``sshare`` gives the account's shares and the user's fair-share factor in it; ``sacct`` the
month's jobs, from which the GPU-hours (whole GPUs, ``gres/gpu`` of AllocTRES, times the time
each job ran inside the month) are summed per account and rolled up the site's account tree, as
Slurm's ``GrpTRESMins`` counts an account's sub-accounts. GPU slices (``gres/shard``) do not
count: Slurm's GPU-minute limit does not count them either. Answers are cached briefly so that
the options form stays fast.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from aifactory.site import NAME_RE, Site
from aifactory.slurm.cache import cached
from aifactory.slurm.queries import _slurm_time, run

SSHARE_FORMAT = "Account,User,RawShares,NormShares,RawUsage,EffectvUsage,FairShare"
SACCT_FORMAT = "JobID,Account,AllocTRES,Start,End"
CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class ShareRow:
    account: str
    user: str  # "" on the account's own row
    raw_shares: str
    norm_shares: float
    raw_usage: int
    effective_usage: float
    fair_share: float | None  # only on users' rows


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_sshare(text: str) -> list[ShareRow]:
    """``sshare -P -n -A ACCOUNTS -u USER -o SSHARE_FORMAT`` (user rows are indented by a space)."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 7 or not parts[0]:
            continue
        account, user, raw_shares, norm, raw_usage, effective, fair_share = parts
        rows.append(ShareRow(account, user, raw_shares, _float(norm) or 0.0,
                             int(raw_usage) if raw_usage.isdigit() else 0, _float(effective) or 0.0,
                             _float(fair_share)))
    return rows


def _gpus(alloc_tres: str) -> int:
    for item in alloc_tres.split(","):
        name, _, value = item.partition("=")
        if name == "gres/gpu" and value.isdigit():
            return int(value)
    return 0


def parse_gpu_hours(sacct_text: str, since: datetime, until: datetime) -> dict[str, float]:
    """``sacct -a -X -n -P -o SACCT_FORMAT``: GPU-hours per account, counting only [since, until]."""
    hours: dict[str, float] = {}
    for line in sacct_text.splitlines():
        parts = line.split("|")
        if len(parts) != 5:
            continue
        _job, account, alloc_tres, start_text, end_text = parts
        gpus, start = _gpus(alloc_tres), _slurm_time(start_text)
        if not gpus or start is None:  # never started, or no whole GPUs
            continue
        end = _slurm_time(end_text) or until  # still running: up to now
        seconds = (min(end, until) - max(start, since)).total_seconds()
        if seconds > 0:
            hours[account] = hours.get(account, 0.0) + gpus * seconds / 3600
    return hours


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class AccountStanding:
    account: str
    shares: str  # the account's raw shares among its siblings
    norm_shares: float  # its fraction of its parent's shares
    fair_share: float | None  # the user's fair-share factor in it (1 = first in line, 0 = last)
    gpu_hours_used: float  # this month, with its sub-accounts
    gpu_hours_limit: int | None  # gpu_hours_per_month of the site file; None = no limit


def describe_standing(standing: AccountStanding, site: Site) -> str:
    """One line for people: shares, the fair-share factor, GPU-hours this month against the limit."""
    parent = site.accounts[standing.account].parent if standing.account in site.accounts else ""
    parts = [f"{standing.account}: {standing.shares or '?'} shares"
             + (f" ({standing.norm_shares * 100:.0f}% of {parent or 'the cluster'})" if standing.norm_shares else "")]
    if standing.fair_share is not None:
        parts.append(f"your fair-share factor {standing.fair_share:.2f}")
    used = f"GPU-hours this month {standing.gpu_hours_used:.1f}"
    if standing.gpu_hours_limit is not None:
        used += f" of {standing.gpu_hours_limit} ({max(standing.gpu_hours_limit - standing.gpu_hours_used, 0):.1f} left)"
    parts.append(used)
    return "; ".join(parts)


def ancestors(site: Site, account: str) -> list[str]:
    """The account and its parents in the site file, the account first."""
    chain = []
    while account in site.accounts and account not in chain:
        chain.append(account)
        account = site.accounts[account].parent
    return chain


def subtree(site: Site, account: str) -> set[str]:
    return {name for name in site.accounts if account in ancestors(site, name)} | {account}


def roll_up(site: Site, direct: dict[str, float], accounts: list[str]) -> dict[str, float]:
    """Each account's GPU-hours with those of its sub-accounts (as GrpTRESMins counts them)."""
    return {account: sum(direct.get(a, 0.0) for a in subtree(site, account)) for account in accounts}


async def user_standing(username: str, accounts: list[str], site: Site,
                        max_age: float = CACHE_SECONDS) -> dict[str, AccountStanding]:
    """Standing in each of ``accounts`` and in every parent of theirs that has a GPU-hour limit."""
    accounts = [a for a in accounts if NAME_RE.match(a)]
    if not accounts:
        return {}
    limited = [a for acc in accounts for a in ancestors(site, acc)[1:]
               if site.accounts[a].gpu_hours_per_month is not None]
    wanted = list(dict.fromkeys([*accounts, *limited]))
    counted = sorted(set().union(*(subtree(site, a) for a in wanted)))
    now = datetime.now().replace(microsecond=0)
    since = month_start(now)

    async def shares():
        return parse_sshare(await run(["sshare", "-P", "-n", "-A", ",".join(wanted), "-u", username,
                                       "-o", SSHARE_FORMAT]))

    async def gpu_hours():
        text = await run(["sacct", "-a", "-X", "-n", "-P", "-A", ",".join(counted),
                          "-S", since.isoformat(), "-E", now.isoformat(), "-o", SACCT_FORMAT])
        return parse_gpu_hours(text, since, now)

    rows, direct = await asyncio.gather(cached(("sshare", username, tuple(wanted)), max_age, shares),
                                        cached(("sacct", tuple(counted), since), max_age, gpu_hours))
    used = roll_up(site, direct, wanted)
    standing = {}
    for account in wanted:
        own = next((r for r in rows if r.account == account and not r.user), None)
        mine = next((r for r in rows if r.account == account and r.user == username), None)
        limit = site.accounts[account].gpu_hours_per_month if account in site.accounts else None
        standing[account] = AccountStanding(account, own.raw_shares if own else "", own.norm_shares if own else 0.0,
                                            mine.fair_share if mine else None, used[account], limit)
    return standing
