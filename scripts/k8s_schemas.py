#!/usr/bin/env python3
"""Copy what the kubernetes platform validates against into roles/k8s/files/schemas/.

Two sources, both Apache-2.0 (see roles/k8s/files/schemas/README.md):

* the pinned upstream CRDs (KServe, LeaderWorkerSet, KubeRay; ``--crds``, by default the shared
  snapshot ``../shared/k8s-crds``): for each kind the project renders, the ``spec.versions[]`` entry
  named by the manifest's apiVersion, its ``schema.openAPIV3Schema`` only;
* the Kubernetes OpenAPI schemas of the built-in kinds the project renders (Service,
  PersistentVolumeClaim), from the ``kubernetes-validate`` package's strict variant, with the
  definitions they reach (references rewritten to ``#/$defs/NAME``).

Descriptions are dropped (they are most of the bytes); nothing else is changed. Run again after
bumping a CRD snapshot or kubernetes-validate:

    .venv/bin/python scripts/k8s_schemas.py --crds ../shared/k8s-crds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "roles" / "k8s" / "files" / "schemas"

#: (CRD file under --crds, kind, version) the project renders.
CRDS = [
    ("kserve/serving.kserve.io_servingruntimes.yaml", "ServingRuntime", "v1alpha1"),
    ("kserve/serving.kserve.io_clusterservingruntimes.yaml", "ClusterServingRuntime", "v1alpha1"),
    ("kserve/serving.kserve.io_inferenceservices.yaml", "InferenceService", "v1beta1"),
    ("lws/leaderworkerset.x-k8s.io_leaderworkersets.yaml", "LeaderWorkerSet", "v1"),
    ("kuberay/ray.io_rayclusters.yaml", "RayCluster", "v1"),
    ("kuberay/ray.io_rayservices.yaml", "RayService", "v1"),
]
#: Built-in kinds: kubernetes-validate file name -> kind.
BUILTINS = {"service-v1.json": "Service", "persistentvolumeclaim-v1.json": "PersistentVolumeClaim"}
REF_PREFIX = "/api/_definitions.json#/$defs/"
LOCAL_PREFIX = "#/$defs/"


def strip_descriptions(node: Any) -> Any:
    """The schema without its prose (a property *named* description is a dict and stays)."""
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        for prefix in (REF_PREFIX, LOCAL_PREFIX):
            if isinstance(ref, str) and ref.startswith(prefix):
                found.add(ref[len(prefix) :])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite(v) for k, v in node.items() if not k.startswith("$schema") and k != "$id"}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            out["$ref"] = "#/$defs/" + ref[len(REF_PREFIX) :]
        return out
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def crd_schema(path: Path, kind: str, version: str) -> dict[str, Any]:
    doc = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    group = doc["spec"]["group"]
    if doc["spec"]["names"]["kind"] != kind:
        raise SystemExit(f"{path}: defines {doc['spec']['names']['kind']}, not {kind}")
    for v in doc["spec"]["versions"]:
        if v["name"] == version:
            return {
                "apiVersion": f"{group}/{version}",
                "kind": kind,
                "scope": doc["spec"]["scope"],
                "source": {"file": str(path.relative_to(path.parent.parent)), "sha256": sha256(path)},
                "openAPIV3Schema": strip_descriptions(v["schema"]["openAPIV3Schema"]),
            }
    raise SystemExit(f"{path}: no version {version}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def builtin_schemas(schema_dir: Path) -> dict[str, Any]:
    defs_all = json.loads((schema_dir / "_definitions.json").read_text())["$defs"]
    kinds: dict[str, Any] = {}
    wanted: set[str] = set()
    for name, kind in BUILTINS.items():
        schema = json.loads((schema_dir / name).read_text())
        _refs(schema, wanted)
        kinds[kind] = strip_descriptions(_rewrite(schema))
    defs: dict[str, Any] = {}
    todo = sorted(wanted)
    while todo:
        name = todo.pop()
        if name in defs:
            continue
        defs[name] = strip_descriptions(_rewrite(defs_all[name]))
        more: set[str] = set()
        _refs(defs_all[name], more)
        todo.extend(sorted(more - set(defs)))
    return {"kinds": kinds, "$defs": dict(sorted(defs.items()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crds", type=Path, default=ROOT.parent / "shared" / "k8s-crds")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import kubernetes_validate  # noqa: PLC0415  (only this script needs it: the built-in kinds' schemas)

    version = kubernetes_validate.latest_version()
    schema_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
    args.out.mkdir(parents=True, exist_ok=True)
    for rel, kind, ver in CRDS:
        data = crd_schema(args.crds / rel, kind, ver)
        (args.out / f"{kind.lower()}-{ver}.json").write_text(
            json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"
        )
    core = builtin_schemas(schema_dir)
    core["source"] = {
        "package": "kubernetes-validate",
        "version": kubernetes_validate.__version__,
        "schemas": schema_dir.name,
    }
    (args.out / "core-v1.json").write_text(json.dumps(core, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {len(CRDS) + 1} schema files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
