"""The ``aifactory`` command: local cluster, site file, course tools and batch runs of notebooks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def default_site() -> str:
    """$AIFACTORY_SITE, else the checkout's hub_config/site.yaml, else the published copy."""
    if os.environ.get("AIFACTORY_SITE"):
        return os.environ["AIFACTORY_SITE"]
    local = Path.cwd() / "hub_config" / "site.yaml"
    return str(local) if local.exists() else "/opt/aifactory/published/site.yaml"


def _site(args):
    from aifactory.site import SiteError, load_site

    try:
        return load_site(args.site)
    except SiteError as e:
        sys.exit(f"error: site file: {e}")


def cmd_cluster(args) -> int:
    from aifactory.slurm import localcluster

    if os.geteuid() != 0:
        sys.exit("error: the local cluster is managed as root (it starts system daemons)")
    try:
        if args.action == "start":
            localcluster.start(_site(args))
        elif args.action == "stop":
            localcluster.stop(everything=args.all, site=_site(args) if args.all else None)
        else:
            for daemon, running in localcluster.status().items():
                print(f"{daemon:10s} {'running' if running else 'stopped'}")
    except localcluster.ClusterError as e:
        sys.exit(f"error: {e}")
    return 0


def cmd_site(args) -> int:
    site = _site(args)
    print(f"{site.path}: OK ({len(site.partitions)} partitions, {site.total_gpus} GPUs, "
          f"{len(site.accounts)} accounts)")
    return 0


def cmd_courses(args) -> int:
    from aifactory import courses

    return courses.cli(args, _site(args))


def cmd_accounts(args) -> int:
    from aifactory.slurm import accounts

    # _site validates first: an invalid site file changes nothing in Slurm
    return accounts.cli(args, _site(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aifactory", description=__doc__)
    parser.add_argument("--site", default=default_site(),
                        help="site file (default: $AIFACTORY_SITE, ./hub_config/site.yaml or the published one)")
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser("cluster", help="the local single-node Slurm cluster")
    cluster.add_argument("action", choices=["start", "stop", "status"])
    cluster.add_argument("--all", action="store_true", help="with stop: also stop MariaDB and munge")
    cluster.set_defaults(func=cmd_cluster)

    site = sub.add_parser("site", help="validate the site file")
    site.add_argument("action", choices=["check"])
    site.set_defaults(func=cmd_site)

    from aifactory.courses import add_cli
    from aifactory.data.cli import add_cli as add_data_cli
    from aifactory.services import usage_report
    from aifactory.slurm import accounts
    from aifactory.workshops import client as workshop_client

    add_cli(sub, cmd_courses)
    accounts.add_cli(sub, cmd_accounts)
    workshop_client.add_cli(sub, lambda args: workshop_client.cli(args))
    usage_report.add_cli(sub, lambda args: usage_report.cli(args, _site(args)))
    add_data_cli(sub)
    from aifactory.runs.cli import add_cli as add_runs_cli

    add_runs_cli(sub)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
