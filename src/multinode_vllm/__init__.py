"""multinode.vllm: bare-metal GPU servers to a serving multi-node vLLM cluster."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The repository (and collection) root: playbooks/, roles/, inventories/ live here.
PROJECT_DIR = Path(__file__).resolve().parents[2]

# The runner API (after PROJECT_DIR, which it uses). Importing it costs ~0.1 s.
from multinode_vllm.api import (  # noqa: E402
    BadInput,
    HostUnreachable,
    InventoryError,
    MultinodeError,
    PlaybookFailed,
    RunInterrupted,
    RunOptions,
    RunResult,
    RunTimeout,
    run,
)

__all__ = [
    "PROJECT_DIR",
    "BadInput",
    "HostUnreachable",
    "InventoryError",
    "MultinodeError",
    "PlaybookFailed",
    "RunInterrupted",
    "RunOptions",
    "RunResult",
    "RunTimeout",
    "__version__",
    "run",
]
