# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Model files on a node: is a checkpoint complete, how big is it, and a quick-check copy.

Pure functions over paths, stdlib only (the node runs them under its system Python): used by
the `model_files` and `model_copy` modules of the model phase.

Complete means what vLLM's default loader needs: a readable config.json, at least one
*.safetensors file, every file an index (*.safetensors.index.json) names present and holding the
tensors the index assigns to it, and every safetensors file exactly as long as its header says.
The header check catches an interrupted download or copy without reading the weights: a
safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the data
buffer whose extent the header's ``data_offsets`` give.

The copy mirrors a directory the way ``rsync -a`` does by default: a file whose size or
modification time differs is copied again (to a hidden temporary name, then renamed, so a
half-copied file never has its real name); symlinks that stay inside the tree (the Hugging Face
cache's snapshots -> blobs) are recreated, others are followed. Nothing in the destination is
deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from typing import Any

INDEX_SUFFIX = ".safetensors.index.json"
#: A safetensors header larger than this is not a header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
PARTIAL_SUFFIX = ".mnv-partial"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class ModelFileError(ValueError):
    """Invalid arguments (a relative path, an empty repo id); the message says which and why."""


def _size(path: str) -> int:
    return os.stat(path).st_size


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def read_safetensors_header(path: str) -> tuple[int, dict[str, Any]]:
    """(header length, header) of a safetensors file; ValueError saying what is wrong."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{len(head)} bytes: shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length == 0 or length > MAX_HEADER_BYTES:
            raise ValueError(f"header length {length} is not plausible: not a safetensors file, or corrupt")
        raw = handle.read(length)
    if len(raw) < length:
        raise ValueError(f"the header says {length} bytes of JSON but the file ends after {len(raw)}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return length, header


def check_safetensors(path: str) -> dict[str, Any]:
    """One safetensors file: its size, the size its header implies, its tensors, a problem or None."""
    name = os.path.basename(path)
    info: dict[str, Any] = {"name": name, "bytes": 0, "expected_bytes": None, "tensors": [], "problem": None}
    if not os.path.lexists(path):
        info["problem"] = f"{name} is missing"
        return info
    try:
        info["bytes"] = _size(path)
        length, header = read_safetensors_header(path)
    except FileNotFoundError:
        info["problem"] = f"{name} is missing (a dangling link: its blob was never downloaded or was removed)"
        return info
    except (OSError, ValueError) as exc:
        info["problem"] = f"{name}: {exc}"
        return info
    end = 0
    tensors = []
    for key, value in header.items():
        if key == "__metadata__":
            continue
        offsets = value.get("data_offsets") if isinstance(value, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            info["problem"] = f"{name}: tensor {key} has no valid data_offsets in the header"
            return info
        end = max(end, offsets[1])
        tensors.append(key)
    info["tensors"] = tensors
    expected = 8 + length + end
    info["expected_bytes"] = expected
    if info["bytes"] < expected:
        info["problem"] = (
            f"{name} is truncated: {info['bytes']} bytes, its header says {expected} (an interrupted download or copy)"
        )
    elif info["bytes"] > expected:
        info["problem"] = f"{name} is {info['bytes']} bytes, its header says {expected}: corrupt"
    return info


def repo_folder(repo: str) -> str:
    """The Hugging Face cache's folder name of a model repo: org/name -> models--org--name."""
    return "models--" + repo.replace("/", "--")


def hub_snapshot(hf_home: str, repo: str, revision: str) -> tuple[str, str, str | None]:
    """(snapshot dir, commit, problem) of a repo in the cache under HF_HOME (``<hf_home>/hub``).

    A 40-hex revision is the commit itself; a branch or tag is resolved through ``refs/<rev>``,
    which ``hf download`` writes once it has resolved it.
    """
    if not repo or repo.startswith("/"):
        raise ModelFileError(f"repo {repo!r}: give a Hugging Face repo id such as meta-llama/Llama-3.1-8B-Instruct")
    base = os.path.join(hf_home, "hub", repo_folder(repo))
    if COMMIT_RE.match(revision):
        commit = revision
    else:
        ref = os.path.join(base, "refs", revision)
        try:
            with open(ref, encoding="utf-8") as handle:
                commit = handle.read().strip()
        except OSError:
            return "", "", f"{repo}@{revision} is not in the Hugging Face cache {hf_home} (no {ref})"
    return os.path.join(base, "snapshots", commit), commit, None


def size_check(actual: int, expected: int, tolerance: float) -> dict[str, Any]:
    """Compare the weight files' bytes with the planner's weight bytes (0: not checked)."""
    if expected <= 0:
        return {"checked": False, "ok": True, "expected_bytes": 0, "actual_bytes": actual, "deviation": None}
    deviation = (actual - expected) / expected
    return {
        "checked": True,
        "ok": abs(deviation) <= tolerance,
        "expected_bytes": expected,
        "actual_bytes": actual,
        "deviation": round(deviation, 4),
        "tolerance": tolerance,
    }


def inspect_model(path: str, expected_weight_bytes: int = 0, tolerance: float = 0.1) -> dict[str, Any]:
    """Everything the model phase checks about a model directory (see the module docstring)."""
    result: dict[str, Any] = {
        "path": path,
        "exists": os.path.isdir(path),
        "complete": False,
        "problems": [],
        "config": False,
        "index": [],
        "weight_files": [],
        "weight_bytes": 0,
        "tensor_count": 0,
        "total_bytes": 0,
        "file_count": 0,
    }
    problems: list[str] = result["problems"]
    if not result["exists"]:
        problems.append(f"{path} does not exist or is not a directory")
        result["size_check"] = size_check(0, expected_weight_bytes, tolerance)
        return result
    names = sorted(os.listdir(path))
    for name in names:
        full = os.path.join(path, name)
        if os.path.isfile(full) and not name.startswith("."):
            result["file_count"] += 1
            result["total_bytes"] += _size(full)

    config = os.path.join(path, "config.json")
    try:
        with open(config, encoding="utf-8") as handle:
            result["config"] = isinstance(json.load(handle), dict)
        if not result["config"]:
            problems.append("config.json does not hold a JSON object")
    except FileNotFoundError:
        problems.append("config.json is missing")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"config.json cannot be read ({exc})")

    # Every *.safetensors name, dangling cache links included (check_safetensors reports them).
    shards = {n: check_safetensors(os.path.join(path, n)) for n in names if n.endswith(".safetensors")}
    indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
    result["index"] = indexes
    weight_names: set[str] = set()
    for index in indexes:
        try:
            with open(os.path.join(path, index), encoding="utf-8") as handle:
                weight_map = json.load(handle).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError("it has no weight_map")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            problems.append(f"{index} cannot be read ({exc})")
            continue
        by_file: dict[str, list[str]] = {}
        for tensor, fname in weight_map.items():
            by_file.setdefault(str(fname), []).append(str(tensor))
        for fname in sorted(by_file):
            weight_names.add(fname)
            if fname not in shards:
                shards[fname] = check_safetensors(os.path.join(path, fname))
            shard = shards[fname]
            if not os.path.lexists(os.path.join(path, fname)):
                count = len(by_file[fname])
                shard["problem"] = f"{fname} is missing ({index} assigns {count} tensor{'s' * (count != 1)} to it)"
            elif not shard["problem"]:
                absent = sorted(set(by_file[fname]) - set(shard["tensors"]))
                if absent:
                    shard["problem"] = (
                        f"{fname} lacks {len(absent)} of the {len(by_file[fname])} tensors {index} assigns to it "
                        f"(first: {absent[0]}): another revision or a corrupt file"
                    )
    if not weight_names:
        weight_names = set(shards)
    if not shards:
        problems.append("no *.safetensors weights (vLLM's default loader needs them)")
    for name in sorted(shards):
        if shards[name]["problem"]:
            problems.append(shards[name]["problem"])
    weights = sorted(weight_names)
    result["weight_files"] = weights
    result["weight_bytes"] = sum(shards[n]["bytes"] for n in weights)
    result["tensor_count"] = sum(len(shards[n]["tensors"]) for n in weights)
    result["complete"] = not problems
    result["size_check"] = size_check(result["weight_bytes"], expected_weight_bytes, tolerance)
    return result


def _inside(root: str, target: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(target)]) == root


def plan_copy(src: str, dest: str) -> list[dict[str, str]]:
    """What copying src over dest would do: [{"path": relative path, "kind": file|link, "why": ...}].

    A file is copied when dest lacks it or its size or whole-second modification time differs
    (rsync's quick check); a link inside the tree when dest lacks it or points elsewhere.
    """
    if not os.path.isabs(src) or not os.path.isabs(dest):
        raise ModelFileError(f"src {src!r} and dest {dest!r} must be absolute paths")
    if not os.path.isdir(src):
        raise ModelFileError(f"src {src} does not exist or is not a directory")
    real_src, real_dest = os.path.realpath(src), os.path.realpath(dest)
    if real_src == real_dest or _inside(real_src, real_dest) or _inside(real_dest, real_src):
        raise ModelFileError(f"src {src} and dest {dest} overlap: copy to a directory outside the source")
    actions: list[dict[str, str]] = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel_root = os.path.relpath(root, src)
        for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
            if name.endswith(PARTIAL_SUFFIX):
                continue
            rel = os.path.normpath(os.path.join(rel_root, name))
            s, d = os.path.join(src, rel), os.path.join(dest, rel)
            if os.path.islink(s) and _inside(src, s):
                target = os.readlink(s)
                if not os.path.islink(d):
                    actions.append({"path": rel, "kind": "link", "why": "missing"})
                elif os.readlink(d) != target:
                    actions.append({"path": rel, "kind": "link", "why": "points elsewhere"})
                continue
            if os.path.isdir(s):  # a link to a directory outside the tree: not followed
                continue
            if not os.path.exists(s):
                raise ModelFileError(f"{s} is a dangling link: the source is incomplete")
            if not os.path.isfile(d) or os.path.islink(d):
                actions.append({"path": rel, "kind": "file", "why": "missing"})
                continue
            ss, ds = os.stat(s), os.stat(d)
            if ss.st_size != ds.st_size:
                actions.append({"path": rel, "kind": "file", "why": f"size {ds.st_size} != {ss.st_size}"})
            elif int(ss.st_mtime) != int(ds.st_mtime):
                actions.append({"path": rel, "kind": "file", "why": "modification time"})
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    return actions


def apply_copy(src: str, dest: str, actions: list[dict[str, str]]) -> int:
    """Carry out plan_copy's actions; return the bytes copied."""
    copied = 0
    os.makedirs(dest, mode=0o755, exist_ok=True)
    for action in actions:
        s, d = os.path.join(src, action["path"]), os.path.join(dest, action["path"])
        os.makedirs(os.path.dirname(d), mode=0o755, exist_ok=True)
        tmp = os.path.join(os.path.dirname(d), "." + os.path.basename(d) + PARTIAL_SUFFIX)
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if action["kind"] == "link":
            os.symlink(os.readlink(s), tmp)
        else:
            shutil.copyfile(s, tmp)
            shutil.copystat(s, tmp)
            copied += os.stat(tmp).st_size
        if os.path.isdir(d) and not os.path.islink(d):
            raise ModelFileError(f"{d} is a directory where the source has a file: remove it")
        os.replace(tmp, d)
    return copied


def cache_fix(
    *,
    hub: bool,
    local: bool,
    is_head: bool,
    head_complete: bool,
    model: str,
    hf_home: str,
    download_home: str,
    repo_folder: str,
    copy_here: bool,
    copy_src: str,
) -> str:
    """What to do when the model vLLM would read on a node is incomplete (the model_cache role's fix).

    In order: shared storage that is not shared (the head sees the model complete, this node does
    not), a hub download (delete the broken files, download again), a copy this node makes (repair
    the source), else the files at multinode_model are the user's own.
    """
    if not local and not is_head and head_complete:
        where = hf_home if hub else model
        return (
            f"the head sees the model complete and this node does not: {where} is not the same shared storage "
            "here; mount it at the same path on every node, or set model_cache_storage=local."
        )
    if hub:
        return (
            f"delete the files named above from the cache (and their blobs under {download_home}/hub/{repo_folder}"
            "/blobs), then rerun the model phase: the download fetches what is missing."
        )
    if copy_here:
        return f"repair the source {copy_src}, then rerun: the copy replaces what differs."
    return (
        f"put a complete copy of the model at multinode_model={model} (or set model_cache_source_path to a "
        "complete copy to copy from), then rerun."
    )
