"""Where the shipped templates, cluster profiles and recipes live.

In a source checkout (or an editable install) they are the top-level ``templates/``,
``clusters/`` and ``recipes/`` folders; a regular ``pip install .`` ships them inside the
package as ``hpctune/_data/`` (see setup.cfg), so ``hpctune render`` works anywhere.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent


@cache
def _root(name: str) -> Path:
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return _PKG.parent / name


def templates_dir() -> Path:
    return _root("templates")


def clusters_dir() -> Path:
    return _root("clusters")


def recipes_dir() -> Path:
    return _root("recipes")
