"""A fake /sys/class/infiniband tree: a test fixture for ib_facts (stdlib only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATES = {"ACTIVE": "4: ACTIVE", "DOWN": "1: DOWN", "INIT": "2: INIT", "ARMED": "3: ARMED"}
PHYS = {"ACTIVE": "5: LinkUp", "DOWN": "3: Disabled", "INIT": "5: LinkUp", "ARMED": "5: LinkUp"}
SPEED = {100: "4X EDR", 200: "4X HDR", 400: "4X NDR", 800: "4X XDR"}


def write_tree(
    root: Path,
    hcas: int = 8,
    state: str = "ACTIVE",
    rate_gbps: int = 400,
    link_layer: str = "InfiniBand",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write mlx5_0..mlx5_{hcas-1}, port 1 each; `overrides` maps an HCA to state/rate_gbps/link_layer."""
    base = Path(root) / "class" / "infiniband"
    base.mkdir(parents=True, exist_ok=True)
    for i in range(hcas):
        name = f"mlx5_{i}"
        o = {
            "state": state,
            "rate_gbps": rate_gbps,
            "link_layer": link_layer,
            **(overrides or {}).get(name, {}),
        }
        port = base / name / "ports" / "1"
        port.mkdir(parents=True, exist_ok=True)
        (port / "state").write_text(STATES[o["state"]] + "\n")
        (port / "phys_state").write_text(PHYS[o["state"]] + "\n")
        (port / "rate").write_text(f"{o['rate_gbps']} Gb/sec ({SPEED.get(o['rate_gbps'], '4X')})\n")
        (port / "link_layer").write_text(o["link_layer"] + "\n")
    return base
