"""Trusted data: the site's curated datasets, for notebooks and scripts.

    import aifactory.data
    aifactory.data.list()                         # the datasets of this site
    aifactory.data.info("ed-chest-pain")          # licence, provenance, sensitivity, files
    df = aifactory.data.load("ed-chest-pain", "site-a-small.csv")   # a pandas DataFrame
    X = df[features].to_numpy()                   # numpy, ready for torch.from_numpy

Datasets are published by the data steward (``aifactory data publish``) into the site's data
root with a ``catalogue.json`` (public metadata). Restricted datasets are readable only by a unix
group: the operating system refuses others, and ``load`` explains who grants access.

Every ``load`` is recorded: ``used()`` lists name, version, file and sha256 of what this process
read, and in a Jupyter kernel ``load`` displays one small output whose metadata is
``{"aifactory": {"dataset": ..., "version": ..., "file": ..., "sha256": ...}}``, so an executed
notebook (papermill, nbconvert, a saved lab session) records which data it used.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
from pathlib import Path

CATALOGUE_FILE = "catalogue.json"
DEFAULT_ROOT = "/srv/aifactory-data"
_used: builtins.list[dict] = []


class DatasetAccessError(PermissionError):
    """The operating system refused to read a dataset: the message says who grants it."""

    def _render_traceback_(self):
        # IPython shows this instead of a traceback: the explanation is all the user needs
        return [f"DatasetAccessError: {self}"]


class DatasetIntegrityError(ValueError):
    """A published file does not match its registered checksum."""


def data_root() -> Path:
    """$AIFACTORY_DATA_ROOT, else the site file's ``data.root`` ($AIFACTORY_SITE or the published one)."""
    if os.environ.get("AIFACTORY_DATA_ROOT"):
        return Path(os.environ["AIFACTORY_DATA_ROOT"])
    from aifactory.courses import PUBLISHED_DIR
    from aifactory.site import SiteError, load_site

    site_file = os.environ.get("AIFACTORY_SITE") or f"{PUBLISHED_DIR}/site.yaml"
    try:
        return load_site(site_file).data.root
    except (SiteError, OSError):
        return Path(DEFAULT_ROOT)


def _catalogue(root: Path | None = None) -> dict:
    root = root or data_root()
    try:
        return json.loads((root / CATALOGUE_FILE).read_text())["datasets"]
    except FileNotFoundError:
        raise FileNotFoundError(f"no datasets are published in {root} (the data steward runs "
                                "`aifactory data publish`)") from None


def list() -> builtins.list[str]:  # noqa: A001 - the API reads aifactory.data.list()
    """The names of the published datasets."""
    return sorted(_catalogue())


def info(name: str) -> dict:
    """Everything the registry says about a dataset: licence, provenance, sensitivity, files..."""
    catalogue = _catalogue()
    if name not in catalogue:
        raise KeyError(f"no dataset {name!r} (datasets: {', '.join(sorted(catalogue)) or 'none'})")
    return catalogue[name]


def used() -> builtins.list[dict]:
    """The datasets this process loaded: name, version, file, sha256."""
    return [dict(entry) for entry in _used]


def _refusal(meta: dict) -> str:
    return (f"you may not read dataset {meta['name']!r} ({meta['sensitivity']}). It is readable by members "
            f"of the unix group {meta['unix_group']}, which the registry grants to {meta['granted_to']}. "
            f"Ask the owner, {meta['owner']}, for access. If access was granted after your session "
            "started, start a new session: group membership is read when a job starts.")


def _record(entry: dict) -> None:
    _used.append(entry)
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not getattr(shell, "kernel", None):
        return
    from IPython.display import display

    text = f"dataset {entry['dataset']} {entry['version']} ({entry['file']}, sha256 {entry['sha256'][:12]})"
    display({"text/plain": text}, metadata={"aifactory": entry}, raw=True)


def load(name: str, file: str | None = None):
    """Read a dataset file as a pandas DataFrame (``.to_numpy()`` for numpy and torch).

    ``file`` may be left out when the dataset has one file. Raises DatasetAccessError when the
    operating system refuses the read (with whom to ask), DatasetIntegrityError when the bytes
    differ from the registered checksum.
    """
    import pandas as pd

    meta = info(name)
    files = meta["files"]
    if file is None:
        if len(files) != 1:
            raise ValueError(f"dataset {name!r} has several files; name one: {', '.join(files)}")
        file = next(iter(files))
    if file not in files:
        raise KeyError(f"dataset {name!r} has no file {file!r} (files: {', '.join(files)})")
    # names come from the catalogue, never from the caller: the path stays inside the data root
    path = data_root() / meta["name"] / file
    try:
        data = path.read_bytes()
    except PermissionError:
        raise DatasetAccessError(_refusal(meta)) from None
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != files[file]:
        raise DatasetIntegrityError(f"{path} does not match its registered sha256 ({files[file][:12]}..., read "
                                    f"{sha256[:12]}...): tell the owner, {meta['owner']}")
    index = meta.get("index_column") or None
    frame = pd.read_csv(io.BytesIO(data), float_precision="round_trip", index_col=index,
                        parse_dates=[index] if index else False)
    if index and isinstance(frame.index, pd.DatetimeIndex) and len(frame.index) > 2:
        frame.index.freq = pd.infer_freq(frame.index)
    _record({"dataset": meta["name"], "version": meta["version"], "file": file, "sha256": sha256})
    return frame
