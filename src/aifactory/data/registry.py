"""The dataset registry: ``hub_config/datasets.yaml``, validated into plain dataclasses.

A data steward declares each dataset once: what it is, who owns it, its licence and provenance,
where it may be hosted, how sensitive it is, which Slurm accounts or hub groups may read it, and
the files with their sha256 checksums. ``aifactory data check`` validates the file; errors name
the dataset and the field (``datasets.ed-cohort.licence: missing``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml

from aifactory.site import Site

# a dataset's name becomes a folder and (with the site's group prefix) a unix group: <= 32 chars
DATASET_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,19}$")
FILE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,58}\.csv$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REGION_RE = re.compile(r"^[A-Z]{2}$")  # ISO 3166 country code, or EU
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+-]{0,31}$")
SENSITIVITIES = ("open", "restricted", "pseudonymised-personal")
FORMATS = ("csv",)
DATASET_KEYS = {"title", "description", "version", "owner", "licence", "provenance", "jurisdiction", "hosting",
                "sensitivity", "synthetic", "access", "format", "index_column", "files"}


class RegistryError(ValueError):
    """The registry is invalid; the message names the dataset and the field."""


@dataclass(frozen=True)
class Provenance:
    source: str  # where the data comes from (an organisation, a package, "synthetic")
    method: str  # how it was made
    date: str  # ISO date it was made or obtained


@dataclass(frozen=True)
class DataFile:
    name: str
    generator: str  # a function of aifactory.data.generators
    parameters: dict = field(default_factory=dict, hash=False)
    sha256: str = ""  # empty: not yet recorded (`aifactory data publish --update-checksums`)


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    description: str
    version: str
    owner: str
    licence: str
    provenance: Provenance
    jurisdiction: str
    hosting: str
    sensitivity: str
    synthetic: bool
    accounts: tuple[str, ...]
    groups: tuple[str, ...]
    format: str
    files: tuple[DataFile, ...]
    index_column: str = ""

    @property
    def restricted(self) -> bool:
        return self.sensitivity != "open"

    def may_read(self, accounts, groups) -> bool:
        """Whether a user with these Slurm accounts and hub groups is granted the dataset."""
        return not self.restricted or bool(set(accounts) & set(self.accounts) or set(groups) & set(self.groups))

    def granted_by(self) -> str:
        """'Slurm account regional-health or hub group admins', for messages."""
        parts = []
        if self.accounts:
            parts.append("Slurm account " + " or ".join(self.accounts))
        if self.groups:
            parts.append("hub group " + " or ".join(self.groups))
        return " or ".join(parts) or "everyone"

    def file(self, name: str) -> DataFile:
        for data_file in self.files:
            if data_file.name == name:
                return data_file
        raise KeyError(f"dataset {self.name!r} has no file {name!r} (files: {', '.join(f.name for f in self.files)})")


@dataclass(frozen=True)
class Registry:
    path: Path
    root: Path
    group_prefix: str
    datasets: dict[str, Dataset]

    def unix_group(self, dataset: Dataset) -> str:
        """The unix group whose members may read a restricted dataset."""
        return self.group_prefix + dataset.name

    def folder(self, dataset: Dataset) -> Path:
        return self.root / dataset.name


def _text(spec: dict, key: str, where: str, default=...) -> str:
    if key not in spec or spec[key] in (None, ""):
        if default is ...:
            raise RegistryError(f"{where}.{key}: missing")
        return default
    value = spec[key]
    if isinstance(value, date):
        value = value.isoformat()
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"{where}.{key}: expected text, got {value!r}")
    return value.strip()


def _mapping(spec, where: str) -> dict:
    if not isinstance(spec, dict):
        raise RegistryError(f"{where}: expected a mapping, got {type(spec).__name__}")
    return spec


def _names(spec: dict, key: str, where: str, known, kind: str) -> tuple[str, ...]:
    values = spec.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RegistryError(f"{where}.{key}: expected a list of names, got {values!r}")
    for value in values:
        if value not in known:
            raise RegistryError(f"{where}.{key}: unknown {kind} {value!r} (known: {', '.join(sorted(known))})")
    return tuple(values)


# the functions of aifactory.data.generators, by name: named here so that reading the registry does
# not import numpy and pandas (a course copy in every session job reads it); generators.py checks
# that the two agree when it is imported
GENERATORS = frozenset({"chest_pain_cohort", "energy_load_series", "pseudonymised_admissions", "sklearn_bundled"})


def _load_files(spec, where: str, root: Path, name: str) -> tuple[DataFile, ...]:
    files = []
    for file_name, file_spec in _mapping(spec, where).items():
        fwhere = f"{where}.{file_name}"
        if not isinstance(file_name, str) or not FILE_NAME_RE.match(file_name):
            raise RegistryError(f"{fwhere}: {file_name!r} is not a valid file name (a plain name ending in .csv: "
                                "lower-case letters, digits, - and _; no folders, no shell characters)")
        # a name without / cannot leave the dataset folder; this guards the rule if it ever changes
        if not (root / name / file_name).resolve().is_relative_to(root.resolve()):
            raise RegistryError(f"{fwhere}: the path lies outside the data root {root}")
        file_spec = _mapping(file_spec, fwhere)
        unknown = sorted(set(file_spec) - {"generator", "parameters", "sha256"})
        if unknown:
            raise RegistryError(f"{fwhere}: unknown field(s) {', '.join(unknown)}")
        generator = _text(file_spec, "generator", fwhere)
        if generator not in GENERATORS:
            raise RegistryError(f"{fwhere}.generator: unknown generator {generator!r} "
                                f"(known: {', '.join(sorted(GENERATORS))})")
        parameters = _mapping(file_spec.get("parameters") or {}, f"{fwhere}.parameters")
        sha256 = file_spec.get("sha256") or ""
        if sha256 and (not isinstance(sha256, str) or not SHA256_RE.match(sha256)):
            raise RegistryError(f"{fwhere}.sha256: expected 64 lower-case hex digits, got {sha256!r}")
        files.append(DataFile(file_name, generator, dict(parameters), sha256))
    if not files:
        raise RegistryError(f"{where}: a dataset needs at least one file")
    return tuple(files)


def load_dataset(name, spec, site: Site) -> Dataset:
    where = f"datasets.{name}"
    if not isinstance(name, str) or not DATASET_NAME_RE.match(name):
        raise RegistryError(f"{where}: {name!r} is not a valid dataset name (2-20 lower-case letters, digits "
                            "and -, starting with a letter; no paths, no shell characters)")
    spec = _mapping(spec, where)
    unknown = sorted(set(spec) - DATASET_KEYS)
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if not spec.get("provenance"):
        raise RegistryError(f"{where}.provenance: missing (source, method, date)")
    provenance = _mapping(spec["provenance"], f"{where}.provenance")
    pwhere = f"{where}.provenance"
    made = _text(provenance, "date", pwhere)
    try:
        date.fromisoformat(made)
    except ValueError:
        raise RegistryError(f"{pwhere}.date: expected an ISO date (2026-11-01), got {made!r}") from None
    version = str(spec["version"]) if isinstance(spec.get("version"), (int, float)) else _text(spec, "version", where)
    if not VERSION_RE.match(version):
        raise RegistryError(f"{where}.version: {version!r} is not a version (1.0, 2026.11)")
    sensitivity = _text(spec, "sensitivity", where)
    if sensitivity not in SENSITIVITIES:
        raise RegistryError(f"{where}.sensitivity: must be one of {', '.join(SENSITIVITIES)}, got {sensitivity!r}")
    regions = {}
    for key in ("jurisdiction", "hosting"):
        regions[key] = _text(spec, key, where)
        if not REGION_RE.match(regions[key]):
            raise RegistryError(f"{where}.{key}: expected a country code or EU (NL, EU), got {regions[key]!r}")
    access = _mapping(spec.get("access") or {}, f"{where}.access")
    unknown = sorted(set(access) - {"accounts", "groups"})
    if unknown:
        raise RegistryError(f"{where}.access: unknown field(s) {', '.join(unknown)}")
    accounts = _names(access, "accounts", f"{where}.access", site.accounts, "Slurm account")
    groups = _names(access, "groups", f"{where}.access", site.groups, "hub group")
    if sensitivity != "open" and not accounts and not groups:
        raise RegistryError(f"{where}.access: a {sensitivity} dataset must name the accounts or groups that may "
                            "read it")
    if sensitivity == "open" and (accounts or groups):
        raise RegistryError(f"{where}.access: an open dataset is readable by everyone; make it restricted to "
                            "limit it to accounts or groups")
    data_format = _text(spec, "format", where)
    if data_format not in FORMATS:
        raise RegistryError(f"{where}.format: must be one of {', '.join(FORMATS)}, got {data_format!r}")
    synthetic = spec.get("synthetic", False)
    if not isinstance(synthetic, bool):
        raise RegistryError(f"{where}.synthetic: expected true or false, got {synthetic!r}")
    return Dataset(
        name=name,
        title=_text(spec, "title", where),
        description=_text(spec, "description", where),
        version=version,
        owner=_text(spec, "owner", where),
        licence=_text(spec, "licence", where),
        provenance=Provenance(_text(provenance, "source", pwhere), _text(provenance, "method", pwhere), made),
        jurisdiction=regions["jurisdiction"],
        hosting=regions["hosting"],
        sensitivity=sensitivity,
        synthetic=synthetic,
        accounts=accounts,
        groups=groups,
        format=data_format,
        files=_load_files(spec.get("files") or {}, f"{where}.files", site.data.root, name),
        index_column=_text(spec, "index_column", where, ""),
    )


def load_registry(site: Site, path: Path | None = None) -> tuple[Registry, list[str]]:
    """The valid datasets, and one error per invalid dataset (naming the field).

    Raises RegistryError when the file itself is unreadable.
    """
    path = path or site.data.registry
    if path is None:
        return Registry(Path(), site.data.root, site.data.group_prefix, {}), []
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise RegistryError(f"data.registry: {path} does not exist") from None
    except yaml.YAMLError as e:
        raise RegistryError(f"{path}: not valid YAML: {e}") from None
    raw = _mapping(raw or {}, str(path))
    unknown = sorted(set(raw) - {"datasets"})
    if unknown:
        raise RegistryError(f"{path}: unknown key(s) {', '.join(unknown)}")
    datasets, errors = {}, []
    for name, spec in _mapping(raw.get("datasets") or {}, "datasets").items():
        try:
            datasets[name] = load_dataset(name, spec, site)
        except RegistryError as e:
            errors.append(str(e))
    return Registry(Path(path), site.data.root, site.data.group_prefix, datasets), errors
