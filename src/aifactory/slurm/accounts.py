"""The site file's accounts, QOS and users, made real in Slurm: ``aifactory accounts plan|apply``.

``read_state`` reads what Slurm holds (four ``sacctmgr show ... -P -n`` calls, parsed by
``parse_state``), ``wanted_state`` derives what the site file asks for, and ``plan`` compares
the two into a list of ``Change`` (each one ``sacctmgr -i`` argument list). ``apply`` runs them.

What the site file *manages*: its accounts and every account below its top-level accounts in
Slurm; its QOS; and the users it names (``demo_users`` and the members of ``groups``), in the
accounts of the site's tree only. Removals (an account or a user's association that the file
no longer lists) are planned always and carried out only with ``--prune``. Never touched: the
root account, accounts outside the site's tree, users the file does not name (workshop walk-ins,
other tenants) and accounts such users still belong to; QOS are never removed (``normal`` and
other sites' QOS are not ours to delete).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field

from aifactory.site import Site
from aifactory.slurm.queries import SlurmCommandError, SlurmUnavailable, run

ACCOUNT_FORMAT = "account,description"
ASSOC_FORMAT = "account,user,parentname,fairshare,qos,defaultqos,grptresmins"
USER_FORMAT = "user,defaultaccount"
QOS_FORMAT = "name,description,priority,maxwall,maxtrespu"
GPU_TRES = "gres/gpu"
SHARD_TRES = "gres/shard"


@dataclass(frozen=True)
class SlurmAccount:
    name: str
    parent: str
    shares: str  # as sacctmgr prints it: "25", or "parent"
    description: str
    gpu_minutes: int | None = None  # GrpTRESMins gres/gpu


@dataclass(frozen=True)
class SlurmQos:
    name: str
    description: str
    priority: int
    max_wall_minutes: int | None
    max_gpus_per_user: int | None
    max_slices_per_user: int | None


@dataclass(frozen=True)
class SlurmAssociation:
    user: str
    account: str
    qos: tuple[str, ...]  # sorted
    default_qos: str


@dataclass
class AccountingState:
    """Accounts, QOS and user associations of one cluster (what Slurm holds, or what the site wants)."""

    accounts: dict[str, SlurmAccount] = field(default_factory=dict)
    qos: dict[str, SlurmQos] = field(default_factory=dict)
    associations: dict[tuple[str, str], SlurmAssociation] = field(default_factory=dict)
    default_accounts: dict[str, str] = field(default_factory=dict)

    def below(self, top: set[str]) -> set[str]:
        """The accounts whose parent chain reaches one of ``top`` (themselves included)."""
        found = set()
        for name in self.accounts:
            seen, current = set(), name
            while current and current not in seen:
                if current in top:
                    found.add(name)
                    break
                seen.add(current)
                current = self.accounts[current].parent if current in self.accounts else ""
        return found


# ---------------------------------------------------------------- parsing (sacctmgr -P -n)


def _tres(text: str) -> dict[str, int]:
    """``gres/gpu=2,gres/shard=4`` -> {'gres/gpu': 2, 'gres/shard': 4}."""
    items = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name and value.lstrip("-").isdigit():
            items[name] = int(value)
    return items


def wall_minutes(text: str) -> int | None:
    """Slurm's time (``08:00:00``, ``1-00:00:00``, ``30:00``) in minutes; None when unset."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or (days and not days.isdigit()) or len(parts) > 3:
        return None
    numbers = [int(p) for p in parts]
    if len(numbers) == 3:  # hh:mm:ss
        minutes = numbers[0] * 60 + numbers[1]
    elif len(numbers) == 2:  # d-hh:mm, or mm:ss
        minutes = numbers[0] * 60 + numbers[1] if days else numbers[0]
    else:  # d-hh, or minutes
        minutes = numbers[0] * 60 if days else numbers[0]
    return int(days or 0) * 1440 + minutes


def parse_state(account_text: str, assoc_text: str, user_text: str, qos_text: str) -> AccountingState:
    """The four ``sacctmgr -n -P show ...`` outputs (formats above) as one AccountingState."""
    state = AccountingState()
    descriptions = {}
    for line in account_text.splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[0]:
            descriptions[parts[0]] = parts[1]
    for line in assoc_text.splitlines():
        parts = line.split("|")
        if len(parts) < 7 or not parts[0]:
            continue
        account, user, parent, shares, qos, default_qos, grp_tres_mins = parts[:7]
        if user:
            state.associations[(user, account)] = SlurmAssociation(
                user, account, tuple(sorted(q for q in qos.split(",") if q)), default_qos)
        else:
            state.accounts[account] = SlurmAccount(account, parent, shares, descriptions.get(account, ""),
                                                   _tres(grp_tres_mins).get(GPU_TRES))
    for line in user_text.splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[0]:
            state.default_accounts[parts[0]] = parts[1]
    for line in qos_text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or not parts[0]:
            continue
        name, description, priority, max_wall, per_user = parts[:5]
        limits = _tres(per_user)
        state.qos[name] = SlurmQos(name, description, int(priority) if priority.isdigit() else 0,
                                   wall_minutes(max_wall), limits.get(GPU_TRES), limits.get(SHARD_TRES))
    return state


async def read_state_async(cluster: str) -> AccountingState:
    show = ["sacctmgr", "-n", "-P", "show"]
    texts = await asyncio.gather(
        run([*show, "account", f"format={ACCOUNT_FORMAT}"]),
        run([*show, "assoc", f"cluster={cluster}", f"format={ASSOC_FORMAT}"]),
        run([*show, "user", f"format={USER_FORMAT}"]),
        run([*show, "qos", f"format={QOS_FORMAT}"]),
    )
    return parse_state(*texts)


def read_state(cluster: str) -> AccountingState:
    return asyncio.run(read_state_async(cluster))


# ---------------------------------------------------------------- what the site file wants


def managed_users(site: Site) -> set[str]:
    """Users whose Slurm associations the site file decides: demo_users and group members."""
    return set(site.demo_users) | {user for members in site.groups.values() for user in members}


def wanted_state(site: Site) -> AccountingState:
    wanted = AccountingState()
    for account in site.accounts.values():
        minutes = account.gpu_hours_per_month * 60 if account.gpu_hours_per_month is not None else None
        wanted.accounts[account.name] = SlurmAccount(account.name, account.parent or "root", str(account.shares),
                                                     account.description or account.name, minutes)
    for qos in site.qos.values():
        wanted.qos[qos.name] = SlurmQos(qos.name, qos.description or qos.name, qos.priority, qos.max_hours * 60,
                                        qos.max_gpus_per_user,
                                        qos.max_gpu_slices_per_user if site.total_gpu_slices else None)
    for user in site.demo_users.values():
        wanted.default_accounts[user.name] = user.account
        for account in (user.account, *user.extra_accounts):
            wanted.associations[(user.name, account)] = SlurmAssociation(
                user.name, account, tuple(sorted(user.qos)), user.qos[0])
    return wanted


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Change:
    sign: str  # + add, ~ modify, - remove
    subject: str  # "account regional-energy"
    detail: str
    argv: tuple[str, ...]  # sacctmgr arguments after -i
    prune: bool = False

    def __str__(self) -> str:
        return f"{self.sign} {self.subject}" + (f": {self.detail}" if self.detail else "") \
            + (" (only with --prune)" if self.prune else "")


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what prune leaves alone, and why


def _same_text(a: str, b: str) -> bool:
    # sacctmgr stores descriptions in lower case
    return a.strip().lower() == b.strip().lower()


def _qos_settings(qos: SlurmQos) -> list[str]:
    per_user = f"{GPU_TRES}={qos.max_gpus_per_user}"
    if qos.max_slices_per_user is not None:
        per_user += f",{SHARD_TRES}={qos.max_slices_per_user}"
    return [f"Description={qos.description}", f"Priority={qos.priority}",
            f"MaxWall={qos.max_wall_minutes // 60:02d}:{qos.max_wall_minutes % 60:02d}:00",
            f"MaxTRESPerUser={per_user}"]


def _qos_changes(wanted: AccountingState, current: AccountingState) -> list[Change]:
    changes = []
    for name, qos in wanted.qos.items():
        have = current.qos.get(name)
        if have is None:
            changes.append(Change("+", f"qos {name}", f"{qos.description!r}, priority {qos.priority}, "
                                  f"max {qos.max_wall_minutes // 60} h, {qos.max_gpus_per_user} GPU(s) per user",
                                  ("add", "qos", name, *_qos_settings(qos))))
            continue
        diffs = []
        if not _same_text(have.description, qos.description):
            diffs.append(f"description {have.description!r} -> {qos.description!r}")
        for what, old, new in (("priority", have.priority, qos.priority),
                               ("max minutes", have.max_wall_minutes, qos.max_wall_minutes),
                               ("max GPUs per user", have.max_gpus_per_user, qos.max_gpus_per_user),
                               ("max GPU slices per user", have.max_slices_per_user, qos.max_slices_per_user)):
            if new is not None and old != new:
                diffs.append(f"{what} {old} -> {new}")
        if diffs:
            changes.append(Change("~", f"qos {name}", ", ".join(diffs),
                                  ("modify", "qos", "where", f"name={name}", "set", *_qos_settings(qos))))
    return changes


def _account_changes(wanted: AccountingState, current: AccountingState, cluster: str) -> list[Change]:
    changes = []
    for name, account in wanted.accounts.items():  # site order: parents before their sub-accounts
        have = current.accounts.get(name)
        limit = f"{GPU_TRES}={account.gpu_minutes if account.gpu_minutes is not None else -1}"
        if have is None:
            argv = ["add", "account", name, f"Cluster={cluster}", f"Description={account.description}",
                    f"Parent={account.parent}", f"Fairshare={account.shares}"]
            if account.gpu_minutes is not None:
                argv.append(f"GrpTRESMins={limit}")
            hours = f", {account.gpu_minutes // 60} GPU-hours per month" if account.gpu_minutes is not None else ""
            changes.append(Change("+", f"account {name}", f"parent {account.parent}, shares {account.shares}, "
                                  f"{account.description!r}{hours}", tuple(argv)))
            continue
        where = ("modify", "account", "where", f"name={name}")
        if not _same_text(have.description, account.description):
            changes.append(Change("~", f"account {name}", f"description {have.description!r} -> "
                                  f"{account.description!r}", (*where, "set", f"Description={account.description}")))
        diffs, settings = [], []
        if have.parent != account.parent:
            diffs.append(f"parent {have.parent} -> {account.parent}")
            settings.append(f"Parent={account.parent}")
        if have.shares != account.shares:
            diffs.append(f"shares {have.shares} -> {account.shares}")
            settings.append(f"Fairshare={account.shares}")
        if have.gpu_minutes != account.gpu_minutes:
            diffs.append(f"GPU-minutes per month (GrpTRESMins) {have.gpu_minutes or 'none'} -> "
                         f"{account.gpu_minutes or 'none'}")
            settings.append(f"GrpTRESMins={limit}")
        if diffs:
            changes.append(Change("~", f"account {name}", ", ".join(diffs),
                                  (*where, f"cluster={cluster}", "set", *settings)))
    return changes


def _user_changes(wanted: AccountingState, current: AccountingState, cluster: str) -> list[Change]:
    changes = []
    for (user, account), assoc in wanted.associations.items():
        have = current.associations.get((user, account))
        qos = [f"QOS={','.join(assoc.qos)}", f"DefaultQOS={assoc.default_qos}"]
        if have is None:
            argv = ["add", "user", user, f"Account={account}", f"Cluster={cluster}", *qos]
            if user not in current.default_accounts:
                argv.append(f"DefaultAccount={wanted.default_accounts[user]}")
            changes.append(Change("+", f"user {user} in {account}", f"qos {','.join(assoc.qos)} "
                                  f"(default {assoc.default_qos})", tuple(argv)))
        elif (have.qos, have.default_qos) != (assoc.qos, assoc.default_qos):
            changes.append(Change("~", f"user {user} in {account}",
                                  f"qos {','.join(have.qos)} (default {have.default_qos}) -> {','.join(assoc.qos)} "
                                  f"(default {assoc.default_qos})",
                                  ("modify", "user", "where", f"name={user}", f"account={account}",
                                   f"cluster={cluster}", "set", *qos)))
    for user, account in wanted.default_accounts.items():
        have = current.default_accounts.get(user)
        if have is not None and have != account:
            changes.append(Change("~", f"user {user}", f"default account {have} -> {account}",
                                  ("modify", "user", "where", f"name={user}", "set", f"DefaultAccount={account}")))
    return changes


def plan(site: Site, current: AccountingState) -> Plan:
    """What must change in Slurm so that it matches the site file, in a safe order."""
    wanted = wanted_state(site)
    cluster = site.cluster_name
    result = Plan(_qos_changes(wanted, current) + _account_changes(wanted, current, cluster)
                  + _user_changes(wanted, current, cluster))
    tops = {a.name for a in site.accounts.values() if not a.parent}
    tree = (current.below(tops) | set(wanted.accounts)) - {"root"}
    managed = managed_users(site)
    for (user, account) in sorted(current.associations):
        if user in managed and account in tree and (user, account) not in wanted.associations:
            result.changes.append(Change("-", f"user {user} in {account}", "not in the site file",
                                         ("remove", "user", "where", f"name={user}", f"account={account}",
                                          f"cluster={cluster}"), prune=True))
    gone = tree - set(wanted.accounts)
    for name in sorted(gone, key=lambda n: (-_depth(current, n), n)):  # sub-accounts first
        others = sorted({u for (u, a) in current.associations if a == name and u not in managed})
        below = sorted(a for a in current.accounts if current.accounts[a].parent == name and a not in gone)
        if others or below:
            why = f"users the site file does not name ({', '.join(others)})" if others else \
                f"accounts the site file keeps ({', '.join(below)})"
            result.notes.append(f"account {name} is not in the site file but stays: it holds {why}")
            continue
        result.changes.append(Change("-", f"account {name}", "not in the site file",
                                     ("remove", "account", "where", f"name={name}", f"cluster={cluster}"),
                                     prune=True))
    return result


def _depth(state: AccountingState, name: str) -> int:
    depth = 0
    while name in state.accounts and state.accounts[name].parent and depth < 64:
        name, depth = state.accounts[name].parent, depth + 1
    return depth


# ---------------------------------------------------------------- apply


class AccountsError(RuntimeError):
    pass


def apply(site: Site, prune: bool = False, say=print) -> Plan:
    """Make Slurm match the (already validated) site file; returns what was left undone."""
    todo = plan(site, read_state(site.cluster_name))
    for change in todo.changes:
        if change.prune and not prune:
            continue
        say(f"{change}")
        try:
            asyncio.run(run(["sacctmgr", "-i", *change.argv], timeout=60))
        except (SlurmCommandError, SlurmUnavailable) as e:
            raise AccountsError(f"{change.subject}: sacctmgr {' '.join(change.argv[:2])} failed: {e}") from e
    left = plan(site, read_state(site.cluster_name))
    undone = [c for c in left.changes if not c.prune or prune]
    if undone:
        raise AccountsError("Slurm still differs after apply: " + "; ".join(str(c) for c in undone))
    return left


def print_plan(todo: Plan, say=print) -> None:
    for change in todo.changes:
        say(str(change))
    for note in todo.notes:
        say(f"  note: {note}")
    if not todo.changes:
        say("nothing to do: Slurm matches the site file")


def cli(args, site: Site) -> int:
    try:
        if args.action == "plan":
            print_plan(plan(site, read_state(site.cluster_name)))
            return 0
        left = apply(site, prune=args.prune)
    except (AccountsError, SlurmCommandError, SlurmUnavailable) as e:
        sys.exit(f"error: {e}")
    kept = [c for c in left.changes if c.prune]
    print("Slurm matches the site file" + (f", apart from {len(kept)} removal(s) that only "
                                            "`aifactory accounts apply --prune` carries out" if kept else ""))
    return 0


def add_cli(sub, handler) -> None:
    accounts = sub.add_parser("accounts", help="Slurm accounts, QOS and users from the site file")
    accounts.add_argument("action", choices=["plan", "apply"],
                          help="plan: show what would change; apply: make Slurm match the site file")
    accounts.add_argument("--prune", action="store_true",
                          help="with apply: also remove accounts and users' associations the site file no longer lists")
    accounts.set_defaults(func=handler)
