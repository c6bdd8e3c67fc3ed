"""Every role: meta/argument_specs.yml matches defaults/main.yml key for key.

Like prometheus-community/ansible's lint_arguments_spec.sh, for every role under roles/: the
same keys, the same defaults, a type that fits the default, a description, the role prefix,
and every other entry point only declaring variables of the role's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from multinode_vllm import PROJECT_DIR

ROLES = Path(PROJECT_DIR) / "roles"
ALL_ROLES = sorted(p.name for p in ROLES.iterdir() if (p / "tasks").is_dir())
PY_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "raw": (object,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_there_are_roles() -> None:
    assert {"validate", "preflight"} <= set(ALL_ROLES), ALL_ROLES


@pytest.mark.parametrize("role", ALL_ROLES)
def test_role_has_defaults_specs_and_galaxy_info(role: str) -> None:
    for rel in ("defaults/main.yml", "meta/argument_specs.yml", "meta/main.yml"):
        assert (ROLES / role / rel).is_file(), f"roles/{role}/{rel} is missing"
    meta = load(ROLES / role / "meta" / "main.yml")
    assert meta["galaxy_info"]["role_name"] == role


# The entry point whose spec lists the role's defaults, where it is not main.
DEFAULTS_ENTRY = {"multinode": "setup"}


@pytest.mark.parametrize("role", ALL_ROLES)
def test_argument_specs_match_defaults_key_for_key(role: str) -> None:
    defaults: dict[str, Any] = load(ROLES / role / "defaults" / "main.yml") or {}
    specs = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]
    # multinode documents its defaults at the setup entry point, checked once per run (tasks/main.yml)
    options: dict[str, Any] = specs[DEFAULTS_ENTRY.get(role, "main")].get("options") or {}
    missing = sorted(set(defaults) - set(options))
    extra = sorted(set(options) - set(defaults))
    assert not missing, f"roles/{role}: in defaults/main.yml, not in argument_specs.yml: {missing}"
    assert not extra, f"roles/{role}: in argument_specs.yml, not in defaults/main.yml: {extra}"
    assert list(options) == list(defaults), f"roles/{role}: argument_specs.yml lists the defaults in another order"
    for key, value in defaults.items():
        opt = options[key]
        assert key.startswith(f"{role}_"), f"roles/{role}: {key} lacks the prefix {role}_"
        assert opt.get("description"), f"roles/{role}: {key} has no description"
        assert "default" in opt, f"roles/{role}: {key} has no default in argument_specs.yml"
        assert opt["default"] == value, f"roles/{role}: {key} default {opt['default']!r} != {value!r}"
        kind = opt.get("type", "str")
        templated = isinstance(value, str) and "{{" in value
        if not templated:
            ok = isinstance(value, PY_TYPES[kind]) and not (kind in ("int", "float") and isinstance(value, bool))
            assert ok, f"roles/{role}: {key} is type {kind} but its default {value!r} is not"
        if kind == "list":
            assert "elements" in opt, f"roles/{role}: list {key} has no elements type"


@pytest.mark.parametrize("role", ALL_ROLES)
def test_other_entry_points_only_declare_role_defaults(role: str) -> None:
    defaults = load(ROLES / role / "defaults" / "main.yml") or {}
    specs = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]
    for entry, spec in specs.items():
        unknown = sorted(set(spec.get("options") or {}) - set(defaults))
        assert not unknown, f"roles/{role}: entry point {entry} declares {unknown}, not in defaults/main.yml"
        tasks_file = ROLES / role / "tasks" / f"{entry}.yml"
        assert tasks_file.is_file(), f"roles/{role}: entry point {entry} has no tasks/{entry}.yml"
