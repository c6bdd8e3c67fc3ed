"""multinode.vllm: bare-metal GPU servers to a serving multi-node vLLM cluster."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The repository (and collection) root: playbooks/, roles/, inventories/ live here.
PROJECT_DIR = Path(__file__).resolve().parents[2]

__all__ = ["PROJECT_DIR", "__version__"]
