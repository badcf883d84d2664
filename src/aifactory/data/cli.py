"""``aifactory data check | list | publish | verify``: the data steward's commands."""

from __future__ import annotations

import sys


def add_cli(subparsers) -> None:
    data = subparsers.add_parser("data", help="the trusted-data registry: check, publish, verify")
    actions = data.add_subparsers(dest="action", required=True)
    actions.add_parser("check", help="validate the registry (hub_config/datasets.yaml)")
    actions.add_parser("list", help="list the registered datasets")
    publish = actions.add_parser("publish", help="build the datasets into the data root with their permissions "
                                                 "(root)")
    publish.add_argument("--update-checksums", action="store_true",
                         help="record the generated files' sha256 in the registry instead of refusing")
    actions.add_parser("verify", help="check checksums, owners, modes and group members of the data root")
    data.set_defaults(func=cli)


def cli(args) -> int:
    from aifactory.cli import _site
    from aifactory.data.registry import RegistryError, load_registry

    site = _site(args)
    try:
        registry, errors = load_registry(site)
    except RegistryError as e:
        sys.exit(f"error: {e}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.action == "check":
        print(f"{registry.path}: {len(registry.datasets)} dataset(s) valid, {len(errors)} problem(s)")
        return 1 if errors else 0
    if args.action == "list":
        for d in registry.datasets.values():
            print(f"{d.name:20s} {d.version:6s} {d.sensitivity:22s} {d.licence[:24]:24s} {d.title}")
        return 1 if errors else 0
    if errors:
        sys.exit(f"error: {args.action} refused: the registry has {len(errors)} problem(s) (aifactory data check)")
    if args.action == "publish":
        from aifactory.data.publish import PublishError, publish

        try:
            changes = publish(site, registry, update_checksums=args.update_checksums,
                              progress=lambda line: print(f"== {line}", flush=True))
        except PublishError as e:
            sys.exit(f"error: {e}")
        for change in changes:
            print(change)
        return 0
    from aifactory.data.publish import verify

    problems = verify(site, registry)
    for problem in problems:
        print(f"MISMATCH {problem}")
    print(f"{registry.root}: {len(registry.datasets)} dataset(s), {len(problems)} mismatch(es)")
    return 1 if problems else 0
