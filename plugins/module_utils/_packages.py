# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Installed packages against a wanted version. Pure functions, stdlib only.

The nvidia_driver role pins its packages to a branch ("550": 550.x) or to an exact upstream
version ("550.127.05": 550.127.05-*); what is installed elsewhere is outdated, and apt must be told
to release its hold before it moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def installed_version(packages: Mapping[str, Any], name: str) -> str:
    """The version package_facts reports for ``name`` (the first one listed), or ""."""
    entries = packages.get(name) or [{}]
    first = entries[0] if isinstance(entries, (list, tuple)) and entries else {}
    return str(first.get("version") or "") if isinstance(first, Mapping) else ""


def outdated(packages: Mapping[str, Any], names: Iterable[str], version: Any = "", branch: Any = "") -> list[str]:
    """ "name version" (or "name not installed") for each of ``names`` not at ``version``, else ``branch``.

    ``packages`` is ``ansible_facts.packages`` (name -> [{version, ...}]). An exact version matches
    Debian versions "VERSION-*"; a branch matches "BRANCH.*".
    """
    prefix = f"{version}-" if version else f"{branch}."
    out = []
    for name in names:
        found = installed_version(packages, name)
        if not found.startswith(prefix):
            out.append(f"{name} {found or 'not installed'}")
    return out
