"""The feature sections of the site file: ``workshops``, ``usage``, ``data`` and ``runs``.

Each is optional (a site file without it gets the defaults below); ``site.load_site`` calls
these loaders and keeps the results on ``Site``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aifactory.site_base import USERNAME_RE, SiteError, _check_unknown, _get, _name, _positive

if TYPE_CHECKING:
    from aifactory.site import Account


@dataclass(frozen=True)
class WorkshopSettings:
    """How instructors' workshops use the cluster (the ``workshops`` section)."""

    account: str = "uni-teaching"  # Slurm account of generated walk-in participants
    qos: str = "workshop"
    partition: str = ""  # where the reservation lives; default: the default partition
    max_participants: int = 40
    max_hours: int = 8
    keep_walkin_files_days: int = 14
    # cores: reserve participants x cpus cores (Slurm 22.05 cannot reserve GRES);
    # nodes: reserve whole GPU nodes (GPUs guaranteed; what a production site uses)
    reserve: str = "cores"
    gpus_per_node: int = 0  # with reserve: nodes; 0 = all site GPUs sit on one node


@dataclass(frozen=True)
class UsageSettings:
    """Who sees which usage (the ``usage`` section; /services/usage/, ``aifactory usage``)."""

    # the top-level account whose share of GPU-hours is shown against its fair-share target
    partner_account: str = ""
    # user -> accounts whose usage they may see (with their sub-accounts); admins see all
    managers: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSettings:
    """The trusted-data catalogue (the ``data`` section): registry file and published data root."""

    registry: Path | None = None  # datasets.yaml; None: the site has no registered datasets
    root: Path = Path("/srv/aifactory-data")
    # unix groups that grant read access to restricted datasets: PREFIX + dataset name
    group_prefix: str = "aifd-"


@dataclass(frozen=True)
class RunSettings:
    """Batch runs of notebooks (the ``runs`` section, ``aifactory submit``)."""

    max_array_tasks: int = 20  # most tasks (parameter combinations) one sweep may have
    array_throttle: int = 4  # tasks of one sweep running at once (the job array's %N)
    folder: str = "aifactory-runs"  # under each user's home: one private folder per run


# a folder name under the user's home: no path separators, no leading dot or dash
RUNS_FOLDER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def _load_workshops(raw: dict, accounts: dict, qos: dict, partitions: dict) -> WorkshopSettings:
    spec = _get(raw, "workshops", "site", dict, {})
    where = "workshops"
    defaults = WorkshopSettings()
    _check_unknown(spec, {"account", "qos", "partition", "max_participants", "max_hours",
                          "keep_walkin_files_days", "reserve", "gpus_per_node"}, where)
    settings = WorkshopSettings(
        account=_get(spec, "account", where, str, defaults.account),
        qos=_get(spec, "qos", where, str, defaults.qos),
        partition=_get(spec, "partition", where, str, ""),
        max_participants=_positive(_get(spec, "max_participants", where, int, defaults.max_participants),
                                   f"{where}.max_participants"),
        max_hours=_positive(_get(spec, "max_hours", where, int, defaults.max_hours), f"{where}.max_hours"),
        keep_walkin_files_days=_positive(_get(spec, "keep_walkin_files_days", where, int,
                                              defaults.keep_walkin_files_days), f"{where}.keep_walkin_files_days"),
        reserve=_get(spec, "reserve", where, str, defaults.reserve),
        gpus_per_node=_positive(_get(spec, "gpus_per_node", where, int, 0), f"{where}.gpus_per_node"),
    )
    if "workshops" not in raw:
        return settings
    if settings.account not in accounts:
        raise SiteError(f"{where}.account: unknown account {settings.account!r} (known: {', '.join(accounts)})")
    if settings.qos not in qos:
        raise SiteError(f"{where}.qos: unknown QOS {settings.qos!r} (known: {', '.join(qos)})")
    if settings.partition and settings.partition not in partitions:
        raise SiteError(f"{where}.partition: unknown partition {settings.partition!r}")
    if settings.reserve not in ("cores", "nodes"):
        raise SiteError(f"{where}.reserve: must be cores or nodes, got {settings.reserve!r}")
    return settings


def _load_usage(raw: dict, accounts: dict[str, Account]) -> UsageSettings:
    spec = _get(raw, "usage", "site", dict, {})
    _check_unknown(spec, {"partner_account", "managers"}, "usage")
    # sites without the section: the fair-share split this hub was built for
    partner = _get(spec, "partner_account", "usage", str, "regional" if "regional" in accounts else "")
    if partner and (partner not in accounts or accounts[partner].parent):
        top = [a.name for a in accounts.values() if not a.parent]
        raise SiteError(f"usage.partner_account: {partner!r} is not a top-level account (known: {', '.join(top)})")
    managers = {}
    for user, managed in _get(spec, "managers", "usage", dict, {}).items():
        where = f"usage.managers.{user}"
        _name(str(user), where, USERNAME_RE)
        if not isinstance(managed, list) or not managed:
            raise SiteError(f"{where}: expected a list of accounts, got {managed!r}")
        for account in managed:
            if account not in accounts:
                raise SiteError(f"{where}: unknown account {account!r} (known: {', '.join(accounts)})")
        managers[user] = tuple(managed)
    return UsageSettings(partner, managers)


def _load_runs(raw: dict) -> RunSettings:
    spec = _get(raw, "runs", "site", dict, {})
    where = "runs"
    defaults = RunSettings()
    _check_unknown(spec, {"max_array_tasks", "array_throttle", "folder"}, where)
    settings = RunSettings(
        max_array_tasks=_get(spec, "max_array_tasks", where, int, defaults.max_array_tasks),
        array_throttle=_get(spec, "array_throttle", where, int, defaults.array_throttle),
        folder=_get(spec, "folder", where, str, defaults.folder),
    )
    if settings.max_array_tasks < 1:
        raise SiteError(f"{where}.max_array_tasks: must be at least 1, got {settings.max_array_tasks}")
    if settings.array_throttle < 1:
        raise SiteError(f"{where}.array_throttle: must be at least 1, got {settings.array_throttle}")
    if not RUNS_FOLDER_RE.match(settings.folder) or ".." in settings.folder:
        raise SiteError(f"{where}.folder: {settings.folder!r} must be one folder name under the home "
                        "(letters, digits, _ . -; no /)")
    return settings


GROUP_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]{0,11}$")


def _load_data(raw: dict, site_dir: Path) -> DataSettings:
    """``data: {registry: datasets.yaml, root: /srv/aifactory-data}``; old site files have none."""
    spec = _get(raw, "data", "site", dict, {})
    _check_unknown(spec, {"registry", "root", "group_prefix"}, "data")
    default_registry = site_dir / "datasets.yaml"
    registry = _get(spec, "registry", "data", str, "")
    # existence is checked where the registry is read: a published copy of the site file (for
    # jobs) comes without it
    if registry:
        registry_path = (site_dir / registry).resolve()
    else:
        registry_path = default_registry if default_registry.is_file() else None
    root = _get(spec, "root", "data", str, str(DataSettings.root))
    if not root.startswith("/") or ".." in Path(root).parts or Path(root) == Path("/"):
        raise SiteError(f"data.root: must be an absolute folder other than /, got {root!r}")
    prefix = _get(spec, "group_prefix", "data", str, DataSettings.group_prefix)
    if not GROUP_PREFIX_RE.match(prefix):
        raise SiteError(f"data.group_prefix: {prefix!r} must be 1-12 lower-case letters, digits, - or _")
    return DataSettings(registry_path, Path(root), prefix)
