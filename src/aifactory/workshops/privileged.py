"""``aifactory-privileged``: the few root actions a workshop needs, with a fixed argument grammar.

The workshops service runs it through a sudo rule (never a shell)::

    hubsvc ALL=(root) NOPASSWD: /opt/aifactory/venv/bin/aifactory-privileged

Every argument is matched against an allow-list before anything runs, and every command is an
argument list. It can only touch reservations named ``ws-*`` and walk-in accounts named
``wk-<workshop>-NN`` that are members of the ``aifactory-walkin`` group, so the rule cannot be
turned into "disable any account" or "reserve the machine under another name".

Verbs::

    reservation-create --name ws-X --start T --end T --users a,b --cores N --partition P [--nodes N]
    reservation-extend --name ws-X --end T --minutes M   (also moves the running jobs' time limits)
    reservation-delete --name ws-X
    walkin-create --workshop X --count N --account A --qos Q --expires YYYY-MM-DD   (prints JSON)
    walkin-disable --users wk-X-01,wk-X-02
    walkin-remove --users wk-X-01,wk-X-02      (deletes the account and its home)

Exit status 0 on success; 2 for refused arguments; 1 when a command failed (message on stderr).
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import secrets
import subprocess
import sys

from aifactory.site import NAME_RE, USERNAME_RE

RESERVATION_RE = re.compile(r"^ws-[a-z0-9][a-z0-9-]{2,19}$")
WORKSHOP_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,19}$")
WALKIN_RE = re.compile(r"^wk-[a-z0-9][a-z0-9-]{2,19}-\d{2}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
NODE_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
WALKIN_GROUP = "aifactory-walkin"
# unambiguous characters for passwords read off a printed sheet
PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


class Refused(ValueError):
    pass


def _matching(pattern: re.Pattern, what: str):
    def check(value: str) -> str:
        if not pattern.match(value):
            raise argparse.ArgumentTypeError(f"{what}: {value[:40]!r} is not allowed")
        return value
    return check


def _int_range(low: int, high: int):
    def check(value: str) -> int:
        if not re.fullmatch(r"\d{1,5}", value) or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"{value[:10]!r} is not a whole number in {low}..{high}")
        return int(value)
    return check


def _count_list(value: str) -> list[int]:
    counts = value.split(",")
    if not 1 <= len(counts) <= 64 or not all(re.fullmatch(r"\d{1,5}", c) and int(c) > 0 for c in counts):
        raise argparse.ArgumentTypeError(f"{value[:40]!r}: core counts, comma-separated")
    return [int(c) for c in counts]


def _user_list(pattern: re.Pattern):
    def check(value: str) -> list[str]:
        users = value.split(",")
        if not 1 <= len(users) <= 200 or len(set(users)) != len(users):
            raise argparse.ArgumentTypeError("1 to 200 distinct user names, comma-separated")
        for user in users:
            if not pattern.match(user):
                raise argparse.ArgumentTypeError(f"user name {user[:40]!r} is not allowed")
        return users
    return check


def run(argv: list[str], input: str | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''}: "
                           f"{(result.stderr or result.stdout).strip()[:500]}")
    return result.stdout


# ---------------------------------------------------------------- reservations


def reservation_create(args) -> None:
    argv = ["scontrol", "create", "reservation", f"ReservationName={args.name}",
            f"StartTime={args.start}", f"EndTime={args.end}", f"Users={','.join(args.users)}",
            f"PartitionName={args.partition}"]
    if args.nodes:
        argv.append(f"NodeCnt={args.nodes}")
    else:
        if args.node_names:
            if len(args.node_names) != len(args.cores):
                raise Refused("give one core count per node name")
            argv.append(f"Nodes={','.join(args.node_names)}")
        elif len(args.cores) != 1:
            raise Refused("several core counts need --node-names")
        argv.append(f"CoreCnt={','.join(map(str, args.cores))}")
    print(run(argv).strip())


def reservation_extend(args) -> None:
    run(["scontrol", "update", f"ReservationName={args.name}", f"EndTime={args.end}"])
    # sessions in the reservation were given the window as time limit: move it with the window
    jobs = run(["squeue", "-h", "-R", args.name, "-o", "%i"]).split()
    for job in jobs:
        if re.fullmatch(r"\d+", job):
            run(["scontrol", "update", f"JobId={job}", f"TimeLimit=+{args.minutes}"])
    print(f"reservation {args.name} ends {args.end}; {len(jobs)} job(s) extended by {args.minutes} min")


def reservation_delete(args) -> None:
    result = subprocess.run(["scontrol", "delete", f"ReservationName={args.name}"],
                            capture_output=True, text=True, timeout=60)
    text = (result.stderr + result.stdout).strip()
    if result.returncode != 0 and "Invalid reservation name" not in text:
        raise RuntimeError(f"scontrol delete: {text[:500]}")
    print(f"reservation {args.name} deleted")


# ---------------------------------------------------------------- walk-in accounts


def _password() -> str:
    return "-".join("".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(4)) for _ in range(3))


def user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def _is_walkin(user: str) -> bool:
    if not WALKIN_RE.match(user) or not user_exists(user):
        return False
    try:
        return user in grp.getgrnam(WALKIN_GROUP).gr_mem
    except KeyError:
        return False


def _sacctmgr(*args: str) -> None:
    result = subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True, timeout=60)
    text = (result.stdout + result.stderr).lower()
    if result.returncode != 0 and not any(s in text for s in ("nothing new", "already exists",
                                                                "nothing modified", "nothing deleted")):
        raise RuntimeError(f"sacctmgr {args[0]} {args[1]}: {(result.stderr or result.stdout).strip()[:300]}")


def walkin_create(args) -> None:
    names = [f"wk-{args.workshop}-{i:02d}" for i in range(1, args.count + 1)]
    taken = [n for n in names if user_exists(n)]
    if taken:
        raise Refused(f"accounts exist already: {', '.join(taken)}")
    accounts = run(["sacctmgr", "-n", "-P", "show", "account", args.account, "format=account"]).split()
    if args.account not in accounts:
        raise Refused(f"Slurm account {args.account!r} does not exist")
    subprocess.run(["groupadd", "-f", WALKIN_GROUP], check=True, capture_output=True)
    created = []
    try:
        for name in names:
            run(["useradd", "--create-home", "--shell", "/bin/bash", "-G", WALKIN_GROUP,
                 "--expiredate", args.expires, "--comment", f"walk-in, workshop {args.workshop}", name])
            created.append(name)
            os.chmod(pwd.getpwnam(name).pw_dir, 0o700)
        passwords = {name: _password() for name in names}
        # one call each for all accounts: sacctmgr round trips dominate otherwise
        run(["chpasswd"], input="".join(f"{n}:{p}\n" for n, p in passwords.items()))
        users = ",".join(names)
        _sacctmgr("add", "user", users, f"Account={args.account}", f"DefaultAccount={args.account}")
        _sacctmgr("modify", "user", "where", f"name={users}", "set", f"QOS={args.qos}", f"DefaultQOS={args.qos}")
    except Exception:
        # nothing half-made: remove what this call created
        if created:
            _remove(*created)
        raise
    for name in names:
        print(json.dumps({"username": name, "password": passwords[name]}), flush=True)


def walkin_disable(args) -> None:
    for user in args.users:
        if not _is_walkin(user):
            raise Refused(f"{user!r} is not a walk-in account")
    for user in args.users:
        # locked password and an expired account: PAM refuses the login
        run(["usermod", "--lock", "--expiredate", "1", user])
    print(f"disabled {len(args.users)} walk-in account(s)")


def _remove(*users: str) -> None:
    # a job still running would keep the account (userdel refuses users with processes)
    subprocess.run(["scancel", "--user", ",".join(users)], capture_output=True, timeout=60)
    for user in users:
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True, timeout=60)
    subprocess.run(["sacctmgr", "-i", "delete", "user", ",".join(users)], capture_output=True, timeout=60)
    for user in users:
        subprocess.run(["userdel", "--remove", user], capture_output=True, timeout=60)


def walkin_remove(args) -> None:
    for user in args.users:
        if not _is_walkin(user):
            raise Refused(f"{user!r} is not a walk-in account")
    _remove(*args.users)
    print(f"removed {len(args.users)} walk-in account(s)")


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aifactory-privileged", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    name = dict(type=_matching(RESERVATION_RE, "reservation"), required=True)
    time = dict(type=_matching(TIME_RE, "time"), required=True)

    c = sub.add_parser("reservation-create")
    c.add_argument("--name", **name)
    c.add_argument("--start", **time)
    c.add_argument("--end", **time)
    c.add_argument("--users", type=_user_list(USERNAME_RE), required=True)
    c.add_argument("--cores", type=_count_list, required=True, help="N, or N1,N2 for --node-names")
    c.add_argument("--node-names", type=_user_list(NODE_RE), default=None)
    c.add_argument("--partition", type=_matching(NAME_RE, "partition"), required=True)
    c.add_argument("--nodes", type=_int_range(1, 10000), default=0)
    c.set_defaults(func=reservation_create)

    e = sub.add_parser("reservation-extend")
    e.add_argument("--name", **name)
    e.add_argument("--end", **time)
    e.add_argument("--minutes", type=_int_range(1, 1440), required=True)
    e.set_defaults(func=reservation_extend)

    d = sub.add_parser("reservation-delete")
    d.add_argument("--name", **name)
    d.set_defaults(func=reservation_delete)

    w = sub.add_parser("walkin-create")
    w.add_argument("--workshop", type=_matching(WORKSHOP_RE, "workshop"), required=True)
    w.add_argument("--count", type=_int_range(1, 99), required=True)
    w.add_argument("--account", type=_matching(NAME_RE, "account"), required=True)
    w.add_argument("--qos", type=_matching(NAME_RE, "qos"), required=True)
    w.add_argument("--expires", type=_matching(DATE_RE, "date"), required=True)
    w.set_defaults(func=walkin_create)

    for verb, func in (("walkin-disable", walkin_disable), ("walkin-remove", walkin_remove)):
        x = sub.add_parser(verb)
        x.add_argument("--users", type=_user_list(WALKIN_RE), required=True)
        x.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 on refused arguments
    if os.geteuid() != 0:
        print("aifactory-privileged must run as root (through its sudo rule)", file=sys.stderr)
        return 1
    try:
        args.func(args)
    except Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
