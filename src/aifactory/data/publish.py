"""Publishing the registry into the data root, and verifying what is there (root only).

Layout under the data root (owned by root, nothing writable by anyone else)::

    catalogue.json            0644  public metadata: what exists, licence, who may read it
    <open dataset>/           0555 root:root,            files 0444
    <restricted dataset>/     0550 root:<prefix><name>,  files 0440

A restricted dataset's unix group holds exactly the users of its allowed Slurm accounts
(``sacctmgr show assoc``; the site's demo users when accounting does not answer) and the
members of its allowed hub groups. Publishing reconciles the membership (adds the missing,
removes the stale); the operating system then enforces who reads what, in every job.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml

from aifactory.data import CATALOGUE_FILE
from aifactory.data.generators import build
from aifactory.data.registry import Dataset, Registry
from aifactory.site import Site

OPEN_DIR, OPEN_FILE = 0o555, 0o444
RESTRICTED_DIR, RESTRICTED_FILE = 0o550, 0o440


class PublishError(RuntimeError):
    """Publishing was refused; nothing was changed."""


# ---------------------------------------------------------------- who may read

def account_members(site: Site) -> dict[str, set[str]]:
    """Slurm account -> users: the accounting database, or the site's demo users without it."""
    from aifactory.slurm import queries

    try:
        return asyncio.run(queries.account_users())
    except (queries.SlurmUnavailable, queries.SlurmCommandError):
        members: dict[str, set[str]] = {}
        for user in site.demo_users.values():
            for account in (user.account, *user.extra_accounts):
                members.setdefault(account, set()).add(user.name)
        return members


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def readers(dataset: Dataset, site: Site, accounts: dict[str, set[str]]) -> set[str]:
    """The unix users who may read a restricted dataset (existing users only)."""
    users = set()
    for account in dataset.accounts:
        users |= accounts.get(account, set())
    for group in dataset.groups:
        users |= set(site.groups.get(group, ()))
    return {user for user in users if _user_exists(user)}


def _group_members(group: str) -> set[str] | None:
    try:
        return set(grp.getgrnam(group).gr_mem)
    except KeyError:
        return None


def reconcile_group(group: str, members: set[str]) -> list[str]:
    """Create the group if needed and make its members exactly ``members``; returns what changed."""
    changes = []
    current = _group_members(group)
    if current is None:
        subprocess.run(["groupadd", "--system", group], check=True, capture_output=True, text=True)
        changes.append(f"created group {group}")
        current = set()
    for user in sorted(members - current):
        subprocess.run(["gpasswd", "-a", user, group], check=True, capture_output=True, text=True)
        changes.append(f"added {user} to {group}")
    for user in sorted(current - members):
        subprocess.run(["gpasswd", "-d", user, group], check=True, capture_output=True, text=True)
        changes.append(f"removed {user} from {group}")
    return changes


# ---------------------------------------------------------------- catalogue and checksums

def catalogue_entry(registry: Registry, dataset: Dataset) -> dict:
    """What every user may know about a dataset (content stays behind its permissions)."""
    return {
        "name": dataset.name, "title": dataset.title, "description": dataset.description,
        "version": dataset.version, "owner": dataset.owner, "licence": dataset.licence,
        "provenance": {"source": dataset.provenance.source, "method": dataset.provenance.method,
                       "date": dataset.provenance.date},
        "jurisdiction": dataset.jurisdiction, "hosting": dataset.hosting,
        "sensitivity": dataset.sensitivity, "synthetic": dataset.synthetic,
        "accounts": list(dataset.accounts), "groups": list(dataset.groups),
        "granted_to": dataset.granted_by(),
        "unix_group": registry.unix_group(dataset) if dataset.restricted else "",
        "format": dataset.format, "index_column": dataset.index_column,
        "files": {f.name: f.sha256 for f in dataset.files},
    }


def update_registry_checksums(path: Path, checksums: dict[tuple[str, str], str]) -> None:
    """Write new sha256 values into the registry file, keeping its comments and layout."""
    text = path.read_text()
    root = yaml.compose(text)
    edits = []

    def child(node, key):
        for key_node, value_node in node.value:
            if key_node.value == key:
                return value_node
        return None

    datasets = child(root, "datasets")
    for (name, file_name), sha256 in checksums.items():
        file_node = child(child(child(datasets, name), "files"), file_name)
        value = child(file_node, "sha256")
        if value is None:
            raise PublishError(f"datasets.{name}.files.{file_name}: add `sha256: \"\"` so that the checksum "
                               "can be recorded")
        edits.append((value.start_mark.index, value.end_mark.index, f'"{sha256}"'))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    path.write_text(text)


# ---------------------------------------------------------------- publish

def _write_dataset(registry: Registry, dataset: Dataset, contents: dict[str, bytes], gid: int) -> None:
    """Write into a private staging folder, set the final permissions, then swap it in."""
    final = registry.folder(dataset)
    staging = final.with_name(f".{dataset.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    dir_mode, file_mode = (RESTRICTED_DIR, RESTRICTED_FILE) if dataset.restricted else (OPEN_DIR, OPEN_FILE)
    for name, data in contents.items():
        fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchown(fd, 0, gid)
            os.fchmod(fd, file_mode)
    os.chown(staging, 0, gid)
    os.chmod(staging, dir_mode)
    old = final.with_name(f".{dataset.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.chmod(final, 0o700)  # a rename needs no access to the folder; shutil.rmtree later does
        final.replace(old)
    staging.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def publish(site: Site, registry: Registry, update_checksums: bool = False,
            progress: Callable[[str], None] = print) -> list[str]:
    """Build every dataset, check or record its checksums, write the data root. Returns the changes."""
    if os.geteuid() != 0:
        raise PublishError("publishing sets file owners and unix groups: run it as root")
    built: dict[str, dict[str, bytes]] = {}
    mismatches, new_checksums = [], {}
    for dataset in registry.datasets.values():
        progress(f"building {dataset.name} ({len(dataset.files)} file(s))")
        built[dataset.name] = {}
        for data_file in dataset.files:
            data = build(data_file.generator, data_file.parameters, dataset.index_column)
            sha256 = hashlib.sha256(data).hexdigest()
            if sha256 != data_file.sha256:
                new_checksums[(dataset.name, data_file.name)] = sha256
                mismatches.append(f"datasets.{dataset.name}.files.{data_file.name}.sha256: registry has "
                                  f"{data_file.sha256 or 'none'}, the generator gives {sha256}")
            built[dataset.name][data_file.name] = data
    if mismatches and not update_checksums:
        raise PublishError("the generated files differ from the registered checksums (nothing was published):\n  "
                           + "\n  ".join(mismatches)
                           + "\nA data steward who changed a generator on purpose runs "
                             "`aifactory data publish --update-checksums` (and raises the version)")
    changes = []
    if new_checksums:
        update_registry_checksums(registry.path, new_checksums)
        changes += [f"recorded sha256 of {name}/{file_name}" for name, file_name in new_checksums]
        registry = replace(registry, datasets={
            name: replace(dataset, files=tuple(replace(f, sha256=new_checksums.get((name, f.name), f.sha256))
                                               for f in dataset.files))
            for name, dataset in registry.datasets.items()})
    root = registry.root
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chown(root, 0, 0)
    os.chmod(root, 0o755)
    accounts = account_members(site)
    for dataset in registry.datasets.values():
        gid = 0
        if dataset.restricted:
            group = registry.unix_group(dataset)
            changes += reconcile_group(group, readers(dataset, site, accounts))
            gid = grp.getgrnam(group).gr_gid
        _write_dataset(registry, dataset, built[dataset.name], gid)
        changes.append(f"published {dataset.name} {dataset.version} to {registry.folder(dataset)}")
    previous = _published_names(root)
    for name in sorted(previous - set(registry.datasets)):
        shutil.rmtree(root / name, ignore_errors=True)
        changes.append(f"removed {name} (no longer in the registry)")
    catalogue = {"datasets": {d.name: catalogue_entry(registry, d) for d in registry.datasets.values()}}
    tmp = root / f".{CATALOGUE_FILE}.new"
    tmp.write_text(json.dumps(catalogue, indent=1, sort_keys=True))
    tmp.chmod(0o644)
    tmp.replace(root / CATALOGUE_FILE)
    return changes


def _published_names(root: Path) -> set[str]:
    try:
        return set(json.loads((root / CATALOGUE_FILE).read_text())["datasets"])
    except (OSError, ValueError, KeyError):
        return set()


# ---------------------------------------------------------------- verify

def _check_node(path: Path, mode: int, gid: int, problems: list[str]) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:
        problems.append(f"{path}: missing")
        return False
    if stat.S_ISLNK(st.st_mode):
        problems.append(f"{path}: is a link")
        return False
    if st.st_uid != 0:
        problems.append(f"{path}: owner is uid {st.st_uid}, expected root")
    if st.st_gid != gid:
        problems.append(f"{path}: group is gid {st.st_gid}, expected {_group_name(gid)} (gid {gid})")
    if stat.S_IMODE(st.st_mode) != mode:
        problems.append(f"{path}: mode is {stat.S_IMODE(st.st_mode):04o}, expected {mode:04o}")
    return True


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def verify(site: Site, registry: Registry) -> list[str]:
    """Every difference between the data root and the registry (checksums, owners, modes, groups)."""
    problems: list[str] = []
    root = registry.root
    if not _check_node(root, 0o755, 0, problems):
        return problems
    try:
        published = json.loads((root / CATALOGUE_FILE).read_text())["datasets"]
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"{root / CATALOGUE_FILE}: unreadable ({e})")
        published = {}
    _check_node(root / CATALOGUE_FILE, 0o644, 0, problems)
    accounts = account_members(site) if any(d.restricted for d in registry.datasets.values()) else {}
    for dataset in registry.datasets.values():
        if published.get(dataset.name) != catalogue_entry(registry, dataset):
            problems.append(f"{root / CATALOGUE_FILE}: the entry of {dataset.name} differs from the registry "
                            "(publish again)")
        gid = 0
        if dataset.restricted:
            group = registry.unix_group(dataset)
            members = _group_members(group)
            if members is None:
                problems.append(f"group {group}: missing")
                continue
            gid = grp.getgrnam(group).gr_gid
            expected = readers(dataset, site, accounts)
            if members != expected:
                extra, missing = sorted(members - expected), sorted(expected - members)
                problems.append(f"group {group}: members differ from the registry"
                                + (f"; not allowed: {', '.join(extra)}" if extra else "")
                                + (f"; missing: {', '.join(missing)}" if missing else ""))
        dir_mode, file_mode = (RESTRICTED_DIR, RESTRICTED_FILE) if dataset.restricted else (OPEN_DIR, OPEN_FILE)
        folder = registry.folder(dataset)
        if not _check_node(folder, dir_mode, gid, problems):
            continue
        expected_files = {f.name for f in dataset.files}
        for extra in sorted(p.name for p in folder.iterdir() if p.name not in expected_files):
            problems.append(f"{folder / extra}: not in the registry")
        for data_file in dataset.files:
            path = folder / data_file.name
            if not _check_node(path, file_mode, gid, problems):
                continue
            sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            if sha256 != data_file.sha256:
                problems.append(f"{path}: sha256 is {sha256}, the registry has {data_file.sha256 or 'none'}")
    return problems
