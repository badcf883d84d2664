"""Print how to log in to the demo hub (``make demo``)."""

from __future__ import annotations

import argparse

from .site import load_site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--site", required=True)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    site = load_site(parser.parse_args().site)
    roles = {user: group for group, users in site.groups.items() for user in users}
    print(f"\nThe AI-factory hub is running: {parser.parse_args().url}\n")
    print(f"  {'user':13s} {'password':18s} {'role':12s} Slurm account")
    for user in site.demo_users.values():
        accounts = ", ".join((user.account, *user.extra_accounts))
        print(f"  {user.name:13s} {user.password:18s} {roles.get(user.name, ''):12s} {accounts}")
    print(f"\nCourse catalogue: {parser.parse_args().url}/services/catalogue/")
    print("Stop everything with: make stop\n")


if __name__ == "__main__":
    main()
