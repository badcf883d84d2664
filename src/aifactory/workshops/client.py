"""``aifactory workshop create|list|show|extend|stop|end``: the workshops service's JSON API from a terminal.

The service validates and authorises exactly as for the page; this only carries the request.
Authentication: a hub API token of the instructor (``--token``, ``$AIFACTORY_TOKEN`` or
``$JUPYTERHUB_API_TOKEN``; make one on the hub's Token page).
"""

from __future__ import annotations

import os
import sys

import requests

SERVICE_PATH = "/services/workshops/api/workshops"


class ClientError(RuntimeError):
    pass


class WorkshopClient:
    def __init__(self, hub_url: str, token: str):
        if not token:
            raise ClientError("no hub API token: pass --token or set AIFACTORY_TOKEN (hub menu: Token)")
        self.base = hub_url.rstrip("/") + SERVICE_PATH
        self.headers = {"Authorization": f"token {token}"}

    def call(self, method: str, path: str = "", body: dict | None = None) -> dict:
        try:
            r = requests.request(method, self.base + path, headers=self.headers, json=body, timeout=180,
                                 allow_redirects=False)
        except requests.RequestException as e:
            raise ClientError(f"cannot reach the hub at {self.base}: {e}") from e
        if r.status_code in (301, 302, 401):
            raise ClientError("the hub did not accept the token (expired, or not an instructor's)")
        try:
            data = r.json()
        except ValueError:
            raise ClientError(f"unexpected answer from the hub ({r.status_code}): {r.text[:200]}") from None
        if r.status_code >= 400:
            raise ClientError(data.get("error") or f"error {r.status_code}")
        return data

    def resolve(self, ref: str) -> int:
        """A workshop by id or by short name."""
        if ref.isdigit():
            return int(ref)
        for w in self.call("GET")["workshops"]:
            if w["name"] == ref:
                return w["id"]
        raise ClientError(f"no workshop {ref[:40]!r} of yours")


def _print_workshop(w: dict) -> None:
    per = (f"{w['gpu_slices']} GPU slice" if w["gpu_slices"] else f"{w['gpus']} GPU" if w["gpus"] else "no GPU")
    print(f"{w['id']:>3}  {w['name']:20s} {w['state']:9s} {w['start'].replace('T', ' ')} - {w['end'][11:]}  "
          f"{w['course']:24s} {len(w['participants']):>3} participants  {per}, {w['cpus']} CPU, "
          f"{w['memory_gb']} GB  {w['reservation']}  ({w['title']})")


def add_cli(sub, func) -> None:
    ws = sub.add_parser("workshop", help="instructors: create and run workshops (through the hub)")
    ws.add_argument("--hub-url", default=os.environ.get("JUPYTERHUB_URL", "http://127.0.0.1:8000"))
    ws.add_argument("--token", default=os.environ.get("AIFACTORY_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", ""))
    actions = ws.add_subparsers(dest="action", required=True)
    c = actions.add_parser("create", help="book a workshop: reservation, group, walk-in logins")
    c.add_argument("--name", required=True, help="short name, e.g. dl-nov28")
    c.add_argument("--title", required=True)
    c.add_argument("--course", required=True)
    c.add_argument("--start", required=True, help="e.g. 2026-11-28T09:00 (cluster time)")
    c.add_argument("--end", required=True)
    c.add_argument("--participants", default="", help="existing users, comma-separated")
    c.add_argument("--walkins", type=int, default=0, help="walk-in accounts to generate")
    for option in ("gpus", "gpu-slices", "cpus", "memory-gb"):
        c.add_argument(f"--{option}", type=int, help="per participant (default: the course's)")
    actions.add_parser("list", help="your workshops")
    for name, text in (("show", "participants and their sessions"), ("end", "stop sessions, delete the "
                       "reservation, disable walk-in logins")):
        a = actions.add_parser(name, help=text)
        a.add_argument("workshop", help="id or short name")
    e = actions.add_parser("extend", help="move the end (and the reservation's)")
    e.add_argument("workshop")
    e.add_argument("--minutes", type=int, required=True)
    s = actions.add_parser("stop", help="stop one participant's session, or all")
    s.add_argument("workshop")
    s.add_argument("--user", default="")
    ws.set_defaults(func=func)


def cli(args) -> int:
    try:
        client = WorkshopClient(args.hub_url, args.token)
        if args.action == "create":
            body = {k: getattr(args, k) for k in ("name", "title", "course", "start", "end", "participants",
                                                    "walkins")}
            for key in ("gpus", "gpu_slices", "cpus", "memory_gb"):
                if getattr(args, key) is not None:
                    body[key] = getattr(args, key)
            data = client.call("POST", "", body)
            _print_workshop(data["workshop"])
            if data["credentials"]:
                print("\nWalk-in logins (shown once; hand out one line each):")
                for c in data["credentials"]:
                    print(f"  {args.hub_url}  login {c['username']:24s} password {c['password']}")
        elif args.action == "list":
            for w in client.call("GET")["workshops"]:
                _print_workshop(w)
        elif args.action == "show":
            data = client.call("GET", f"/{client.resolve(args.workshop)}")
            _print_workshop(data["workshop"])
            for p in data["participants"]:
                print(f"     {p['user']:24s} {p['state']:9s} {p['reason'][:50]:50s} job {p['job_id'] or '-':>6} "
                      f"left {p['time_left'] or '-':>9}  opened {','.join(p['opened']) or '-'}")
        else:
            body = {"minutes": args.minutes} if args.action == "extend" else (
                {"user": args.user} if args.action == "stop" else {})
            data = client.call("POST", f"/{client.resolve(args.workshop)}/{args.action}", body)
            print(data["message"])
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

