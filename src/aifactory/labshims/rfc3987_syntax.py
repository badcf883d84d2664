"""Stand-in for ``rfc3987_syntax`` that loads the real module on first use, not at import.

``jsonschema`` imports ``rfc3987_syntax`` eagerly for its ``iri`` format check, and the real
module compiles ~35 Lark parsers at import: 0.8 s of every JupyterLab start here, for a format no
Jupyter schema uses (jupyter_server#1559, jsonschema#1428). Anything that calls it, or reads any
other name of it, gets the real module, loaded then.
"""

from __future__ import annotations

import importlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_real = None


def _load():
    """Import the real module in this one's place (later imports get it directly)."""
    global _real
    if _real is None:
        shim = sys.modules.pop(__name__)
        saved = sys.path[:]
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
        try:
            _real = importlib.import_module(__name__)
        except BaseException:
            sys.modules[__name__] = shim
            raise
        finally:
            sys.path[:] = saved
    return _real


def is_valid_syntax(*args, **kwargs):
    return _load().is_valid_syntax(*args, **kwargs)


def __getattr__(name):
    if name.startswith("__"):  # the import system asks for __path__ and the like: not a use
        raise AttributeError(name)
    return getattr(_load(), name)
