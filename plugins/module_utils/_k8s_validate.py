# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline validation of the kubernetes platform's manifests: schemas, then our own rules.

Pure functions, stdlib only (used by the ``multinode.vllm.k8s_validate`` module and the tests).

1. ``validate_schema``: each object against its schema, the way an API server with
   ``fieldValidation=Strict`` (kubectl's default) would reject it: custom resources against the
   pinned CRDs' ``spec.versions[].schema.openAPIV3Schema`` (the version the apiVersion names),
   built-in kinds against the Kubernetes OpenAPI schemas (kubernetes-validate's strict variant). An
   unknown field is an error unless the schema says ``x-kubernetes-preserve-unknown-fields`` (or
   gives ``additionalProperties``); ``x-kubernetes-int-or-string`` takes an integer or a string.
   The CRDs' ``metadata: {type: object}`` is checked as an ObjectMeta. Not evaluated: CEL rules
   (``x-kubernetes-validations``), formats, admission webhooks, references between objects.
2. ``check_rules``: what no schema says, labelled ``multinode.vllm rule:`` (seed 003's constraints
   of KServe's multi-node runtime, TP x PP against the GPUs the pods request, /dev/shm, probes).

Every finding names the object (Kind/name), the field path and the fix.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from typing import Any

RULE = "multinode.vllm rule"
SCHEMA = "schema"
GPU_RESOURCES = ("nvidia.com/gpu", "intel.com/gpu", "amd.com/gpu", "habana.ai/gaudi")
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_MISSING = object()


class SchemaError(ValueError):
    """The schema directory is missing or unreadable (names the path and the fix)."""


def finding(obj: dict[str, Any] | None, path: str, message: str, fix: str, source: str = SCHEMA) -> dict[str, str]:
    return {"object": object_name(obj), "path": path, "message": message, "fix": fix, "source": source}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def object_name(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "?/?"
    meta = _dict(obj.get("metadata"))
    return f"{obj.get('kind', '?')}/{meta.get('name', '?')}"


def format_finding(f: dict[str, str]) -> str:
    label = f"{RULE}: " if f["source"] == RULE else ""
    return f"{label}{f['object']}: {f['path'] or '(object)'}: {f['message']}. Fix: {f['fix']}"


# ---------------------------------------------------------------------------------------------
# Schemas


def load_schemas(schema_dir: str) -> dict[str, Any]:
    """{"crds": {(apiVersion, kind): schema}, "core": {kind: schema}, "defs": {...}} from schema_dir."""
    if not os.path.isdir(schema_dir):
        raise SchemaError(f"schema_dir {schema_dir} is not a directory: point it at roles/k8s/files/schemas")
    crds: dict[tuple[str, str], Any] = {}
    core: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for name in sorted(os.listdir(schema_dir)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(schema_dir, name), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise SchemaError(
                f"{os.path.join(schema_dir, name)} is not readable JSON ({exc}): regenerate it "
                "with scripts/k8s_schemas.py"
            ) from exc
        if "openAPIV3Schema" in data:
            crds[(data["apiVersion"], data["kind"])] = data["openAPIV3Schema"]
        else:
            core.update(data.get("kinds", {}))
            defs.update(data.get("$defs", {}))
    if not crds or not core:
        raise SchemaError(f"no CRD or core schemas in {schema_dir}: regenerate them with scripts/k8s_schemas.py")
    return {"crds": crds, "core": core, "defs": defs}


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type")
    if t is None:
        return []
    return list(t) if isinstance(t, list) else [t]


def _is_type(value: Any, t: str) -> bool:
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "string":
        return isinstance(value, str)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "null":
        return value is None
    return True


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def _join(path: str, key: str) -> str:
    if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]" if path else f"[{key!r}]"


class _Walker:
    def __init__(self, obj: dict[str, Any], defs: dict[str, Any]) -> None:
        self.obj = obj
        self.defs = defs
        self.errors: list[dict[str, str]] = []

    def err(self, path: str, message: str, fix: str) -> None:
        self.errors.append(finding(self.obj, path, message, fix))

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            ref = schema["$ref"]
            target = self.defs.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/$defs/") else None
            if target is None:
                raise SchemaError(
                    f"the schemas reference {ref}, which they do not define: regenerate them with "
                    "scripts/k8s_schemas.py"
                )
            schema, seen = target, seen + 1
        return schema

    def check(self, value: Any, schema: dict[str, Any], path: str) -> None:
        schema = self.resolve(schema)
        if not schema:
            return
        if schema.get("x-kubernetes-int-or-string"):
            if not (_is_type(value, "integer") or _is_type(value, "string")):
                self.err(
                    path,
                    f"is {_type_name(value)} {value!r}, must be an integer or a string",
                    'give a number (8) or a quantity string ("8")',
                )
            elif isinstance(value, str) and schema.get("pattern") and not _search(schema["pattern"], value):
                self.err(path, f"{value!r} does not match {schema['pattern']}", "give a valid quantity, e.g. 16Gi")
            return
        for key in ("oneOf", "anyOf"):
            if key in schema:
                branches = [b for b in schema[key] if isinstance(b, dict)]
                if branches and not any(self._quiet(value, b, path) for b in branches):
                    kinds = sorted({t for b in branches for t in _types(self.resolve(b))})
                    self.err(
                        path,
                        f"is {_type_name(value)} {value!r}, matches none of the allowed forms ({', '.join(kinds)})",
                        f"give a value of type {' or '.join(kinds) or 'the documented form'}",
                    )
                    return
        for sub in schema.get("allOf", []):
            self.check(value, sub, path)
        types = _types(schema)
        if value is None and (schema.get("nullable") or "null" in types):
            return
        if types and not any(_is_type(value, t) for t in types):
            want = " or ".join(t for t in types if t != "null")
            self.err(
                path,
                f"is {_type_name(value)} {value!r}, must be {want}",
                f"give a{'n' if want[:1] in 'aeiou' else ''} {want}",
            )
            return
        if "enum" in schema and value not in schema["enum"] and value is not None:
            allowed = ", ".join(repr(v) for v in schema["enum"] if v is not None)
            self.err(path, f"{value!r} is not allowed", f"use one of {allowed}")
        if isinstance(value, dict):
            self.check_object(value, schema, path)
        elif isinstance(value, list):
            self.check_array(value, schema, path)
        elif isinstance(value, str):
            if "pattern" in schema and not _search(schema["pattern"], value):
                self.err(path, f"{value!r} does not match the pattern {schema['pattern']}", "give a value of that form")
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                self.err(path, f"is {len(value)} characters, at most {schema['maxLength']} allowed", "shorten it")
            if "minLength" in schema and len(value) < schema["minLength"]:
                self.err(path, f"is {len(value)} characters, at least {schema['minLength']} needed", "lengthen it")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                self.err(path, f"is {value}, the minimum is {schema['minimum']}", f"give {schema['minimum']} or more")
            if "maximum" in schema and value > schema["maximum"]:
                self.err(path, f"is {value}, the maximum is {schema['maximum']}", f"give {schema['maximum']} or less")

    def _quiet(self, value: Any, schema: dict[str, Any], path: str) -> bool:
        probe = _Walker(self.obj, self.defs)
        probe.check(value, schema, path)
        return not probe.errors

    def check_object(self, value: dict[str, Any], schema: dict[str, Any], path: str) -> None:
        props = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                self.err(_join(path, name), "is required but missing", f"add {name} under {path or 'the object'}")
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        for key, sub in value.items():
            child = _join(path, str(key))
            if key in props:
                sub_schema = props[key]
                if key == "metadata" and self._bare_object(sub_schema) and OBJECT_META in self.defs:
                    # CRDs say only `type: object`; the API server checks an ObjectMeta there.
                    sub_schema = {"$ref": "#/$defs/" + OBJECT_META}
                self.check(sub, sub_schema, child)
            elif isinstance(extra, dict):
                self.check(sub, extra, child)
            elif extra is True or preserve:
                continue
            else:
                close = difflib.get_close_matches(str(key), list(props), n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                known = ", ".join(sorted(props)[:12]) + (", ..." if len(props) > 12 else "")
                self.err(
                    child,
                    "is not a field of this schema (the API server rejects unknown fields)",
                    f"{hint}remove it or correct its name (known here: {known or 'none'})",
                )
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            self.err(path, f"has {len(value)} entries, at most {schema['maxProperties']}", "remove entries")

    @staticmethod
    def _bare_object(schema: dict[str, Any]) -> bool:
        return (
            isinstance(schema, dict)
            and schema.get("type") == "object"
            and not schema.get("properties")
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        )

    def check_array(self, value: list[Any], schema: dict[str, Any], path: str) -> None:
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                self.check(item, items, f"{path}[{i}]")
        if "minItems" in schema and len(value) < schema["minItems"]:
            self.err(path, f"has {len(value)} items, at least {schema['minItems']} needed", "add items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            self.err(path, f"has {len(value)} items, at most {schema['maxItems']} allowed", "remove items")


def _search(pattern: str, value: str) -> bool:
    try:
        return re.search(pattern, value) is not None
    except re.error:  # an RE2 construct Python does not read: the API server checks it
        return True


def validate_schema(obj: Any, schemas: dict[str, Any]) -> list[dict[str, str]]:
    """Schema findings of one object (empty: valid)."""
    if not isinstance(obj, dict):
        return [
            finding(
                None, "", f"is {_type_name(obj)}, not a Kubernetes object", "give a mapping with apiVersion and kind"
            )
        ]
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj.get(key):
            return [finding(obj, key, "is required but missing", f"add {key}")]
    api, kind = obj["apiVersion"], obj["kind"]
    walker = _Walker(obj, schemas["defs"])
    if (api, kind) in schemas["crds"]:
        walker.check(obj, schemas["crds"][(api, kind)], "")
    elif api == "v1" and kind in schemas["core"]:
        walker.check(obj, schemas["core"][kind], "")
    else:
        versions = sorted(a for a, k in schemas["crds"] if k == kind)
        fix = f"use apiVersion {' or '.join(versions)}" if versions else "render only the kinds this collection knows"
        return [finding(obj, "apiVersion", f"no pinned schema for {api} {kind}", fix)]
    if not (isinstance(obj.get("metadata"), dict) and obj["metadata"].get("name")):
        walker.err("metadata.name", "is required but missing", "add metadata.name")
    return walker.errors


# ---------------------------------------------------------------------------------------------
# Our rules (what no schema says)


def _get(obj: Any, path: str, default: Any = None) -> Any:
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any], int, str]]:
    """(path, pod spec, replicas, role) of every pod an object creates; role leader or worker."""
    kind, spec = obj.get("kind"), _dict(obj.get("spec"))
    out: list[tuple[str, dict[str, Any], int, str]] = []
    if kind in ("ServingRuntime", "ClusterServingRuntime"):
        out.append(("spec", spec, 1, "leader"))
        worker = spec.get("workerSpec")
        if isinstance(worker, dict):
            pp = worker.get("pipelineParallelSize")
            out.append(("spec.workerSpec", worker, pp - 1 if isinstance(pp, int) and pp > 1 else 0, "worker"))
    elif kind == "LeaderWorkerSet":
        lwt = _get(obj, "spec.leaderWorkerTemplate", {}) or {}
        size = lwt.get("size", 1) if isinstance(lwt.get("size", 1), int) else 1
        base = "spec.leaderWorkerTemplate"
        if isinstance(_get(lwt, "leaderTemplate.spec"), dict):
            out.append((f"{base}.leaderTemplate.spec", lwt["leaderTemplate"]["spec"], 1, "leader"))
            workers = size - 1
        else:
            workers = size  # without a leaderTemplate every pod is the worker template; the first leads
        if isinstance(_get(lwt, "workerTemplate.spec"), dict):
            out.append((f"{base}.workerTemplate.spec", lwt["workerTemplate"]["spec"], workers, "worker"))
    elif kind in ("RayCluster", "RayService"):
        base = "spec" if kind == "RayCluster" else "spec.rayClusterConfig"
        cluster = _get(obj, base, {}) or {}
        head = _get(cluster, "headGroupSpec.template.spec")
        if isinstance(head, dict):
            out.append((f"{base}.headGroupSpec.template.spec", head, 1, "leader"))
        for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
            pod = _get(group, "template.spec") if isinstance(group, dict) else None
            if isinstance(pod, dict):
                replicas = group.get("replicas", 1) if isinstance(group.get("replicas", 1), int) else 1
                out.append((f"{base}.workerGroupSpecs[{i}].template.spec", pod, replicas, "worker"))
    return out


def _containers(pod: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    return [(i, c) for i, c in enumerate(pod.get("containers") or []) if isinstance(c, dict)]


def _gpu_amount(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def check_rules(objects: list[Any]) -> list[dict[str, str]]:
    """Our rules over the whole set of objects (labelled ``multinode.vllm rule``)."""
    out: list[dict[str, str]] = []
    objs = [o for o in objects if isinstance(o, dict)]

    def bad(obj: dict[str, Any], path: str, message: str, fix: str) -> None:
        out.append(finding(obj, path, message, fix, RULE))

    runtimes = [o for o in objs if o.get("kind") in ("ServingRuntime", "ClusterServingRuntime")]
    isvcs = [o for o in objs if o.get("kind") == "InferenceService"]
    for isvc in isvcs:
        ann = _get(isvc, "metadata.annotations", {}) or {}
        path = "metadata.annotations['serving.kserve.io/deploymentMode']"
        mode = ann.get("serving.kserve.io/deploymentMode")
        if mode != "RawDeployment":
            bad(
                isvc,
                path,
                f"is {mode!r}: multi-node works only in RawDeployment mode (seed 003)",
                "set the annotation serving.kserve.io/deploymentMode: RawDeployment",
            )
        path = "metadata.annotations['serving.kserve.io/autoscalerClass']"
        autoscaler = ann.get("serving.kserve.io/autoscalerClass")
        if autoscaler != "external":
            bad(
                isvc,
                path,
                f"is {autoscaler!r}: a multi-node predictor cannot autoscale (seed 003)",
                "set the annotation serving.kserve.io/autoscalerClass: external",
            )
        uri = _get(isvc, "spec.predictor.model.storageUri")
        if not (isinstance(uri, str) and uri.startswith("pvc://")):
            bad(
                isvc,
                "spec.predictor.model.storageUri",
                f"is {uri!r}: the multi-node runtime loads models only from a PVC",
                "use pvc://<ReadWriteMany claim>/<model directory>",
            )
        else:
            claim = uri[len("pvc://") :].split("/", 1)[0]
            for p in objs:
                if p.get("kind") == "PersistentVolumeClaim" and _get(p, "metadata.name") == claim:
                    break
            else:
                if any(o.get("kind") == "PersistentVolumeClaim" for o in objs):
                    bad(
                        isvc,
                        "spec.predictor.model.storageUri",
                        f"names the claim {claim!r}, which none of these objects is",
                        "use the rendered PVC's name (k8s_pvc_name)",
                    )
        wspec = _get(isvc, "spec.predictor.workerSpec")
        if isinstance(wspec, dict):
            _check_tp_pp(isvc, "spec.predictor.workerSpec", wspec, bad, required=False)
        for i, c in enumerate(_get(isvc, "spec.predictor.model.env", []) or []):
            _check_env(isvc, f"spec.predictor.model.env[{i}]", c, bad)
    for rt in runtimes:
        wspec = _get(rt, "spec.workerSpec")
        if not isinstance(wspec, dict):
            bad(
                rt,
                "spec.workerSpec",
                "is missing: a multi-node runtime needs a workerSpec",
                "add spec.workerSpec with containers, tensorParallelSize and pipelineParallelSize",
            )
        else:
            _check_tp_pp(rt, "spec.workerSpec", wspec, bad, required=True)
    for p in objs:
        if p.get("kind") == "PersistentVolumeClaim":
            modes = _get(p, "spec.accessModes", []) or []
            if "ReadWriteMany" not in modes:
                bad(
                    p,
                    "spec.accessModes",
                    f"is {modes!r}: every pod of the group mounts the model at once",
                    "use accessModes: [ReadWriteMany] (a storage class that supports RWX: NFS, CephFS, ...)",
                )

    kinds_used: dict[str, str] = {}
    for obj in objs:
        pods = pod_specs(obj)
        if not pods:
            continue
        tp, pp = _parallel(obj)
        total = 0
        for base, pod, replicas, role in pods:
            shm_mounts = {
                m.get("name")
                for _ci, c in _containers(pod)
                for m in c.get("volumeMounts") or []
                if isinstance(m, dict) and m.get("mountPath") == "/dev/shm"
            }
            vols = {v.get("name"): (i, v) for i, v in enumerate(pod.get("volumes") or []) if isinstance(v, dict)}
            if not shm_mounts:
                bad(
                    obj,
                    f"{base}.containers[0].volumeMounts",
                    "mounts nothing at /dev/shm: NCCL and Ray need more than the container runtime's 64 MiB",
                    "mount an emptyDir {medium: Memory, sizeLimit: 16Gi} at /dev/shm",
                )
            for name in shm_mounts:
                i, vol = vols.get(name, (-1, None))
                if vol is None:
                    bad(
                        obj,
                        f"{base}.volumes",
                        f"has no volume {name!r} for the /dev/shm mount",
                        f"add the volume {name}",
                    )
                elif not (_get(vol, "emptyDir.medium") == "Memory" and _get(vol, "emptyDir.sizeLimit")):
                    bad(
                        obj,
                        f"{base}.volumes[{i}].emptyDir",
                        "is not a memory emptyDir with a sizeLimit: /dev/shm unbounded (or on disk)",
                        "use emptyDir: {medium: Memory, sizeLimit: 16Gi}",
                    )
            for ci, c in _containers(pod):
                cpath = f"{base}.containers[{ci}]"
                for ei, e in enumerate(c.get("env") or []):
                    _check_env(obj, f"{cpath}.env[{ei}]", e, bad)
                has_probe = [p for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in c]
                if role == "worker" and has_probe:
                    bad(
                        obj,
                        f"{cpath}.{has_probe[0]}",
                        "is set on a worker: workers serve no HTTP, the probe fails and the group restarts",
                        "remove the probe from the worker; probe the leader only",
                    )
                if role == "leader" and ci == 0 and "readinessProbe" not in c:
                    bad(
                        obj,
                        f"{cpath}.readinessProbe",
                        "is missing on the leader: the Service sends traffic before vLLM loaded the model",
                        "add readinessProbe: httpGet /health on the vLLM port",
                    )
                res = _dict(c.get("resources"))
                requests, limits = _dict(res.get("requests")), _dict(res.get("limits"))
                for gpu in GPU_RESOURCES:
                    if gpu in requests or gpu in limits:
                        kinds_used.setdefault(gpu, f"{object_name(obj)} {cpath}.resources")
                        if gpu != next(iter(kinds_used)):
                            bad(
                                obj,
                                f"{cpath}.resources",
                                f"requests {gpu} while {kinds_used[next(iter(kinds_used))]} "
                                f"requests {next(iter(kinds_used))}: pods would get both kinds (seed 003)",
                                "use one GPU resource type (k8s_gpu_resource) in every object",
                            )
                req, lim = _gpu_amount(requests.get("nvidia.com/gpu")), _gpu_amount(limits.get("nvidia.com/gpu"))
                if "nvidia.com/gpu" in requests or "nvidia.com/gpu" in limits:
                    if req != lim:
                        bad(
                            obj,
                            f"{cpath}.resources",
                            f"requests {requests.get('nvidia.com/gpu')} nvidia.com/gpu but limits "
                            f"{limits.get('nvidia.com/gpu')}",
                            "give requests equal to limits (extended resources are not overcommitted)",
                        )
                    elif tp is not None and req != tp:
                        bad(
                            obj,
                            f"{cpath}.resources.limits['nvidia.com/gpu']",
                            f"is {lim} but the tensor parallel size is {tp}: one pipeline stage per pod needs TP GPUs",
                            f"request {tp} nvidia.com/gpu per pod",
                        )
                if ci == 0:
                    amount = next((_gpu_amount(limits[g]) for g in GPU_RESOURCES if g in limits), None)
                    total += (amount or 0) * replicas
        if tp is not None and pp is not None and obj.get("kind") != "InferenceService" and total != tp * pp:
            bad(
                obj,
                pods[0][0],
                f"the pods request {total} GPUs in all but TP {tp} x PP {pp} = {tp * pp}",
                "request TP GPUs in each of PP pods (leader + workers)",
            )
    return out


def _check_tp_pp(obj: dict[str, Any], path: str, wspec: dict[str, Any], bad: Any, required: bool) -> None:
    for key, minimum in (("tensorParallelSize", 1), ("pipelineParallelSize", 2)):
        value = wspec.get(key)
        if value is None:
            if required:
                bad(
                    obj,
                    f"{path}.{key}",
                    "is missing: a multi-node runtime needs both tensorParallelSize and "
                    "pipelineParallelSize (seed 003)",
                    f"set {path}.{key}",
                )
        elif isinstance(value, int) and not isinstance(value, bool) and value < minimum:
            bad(
                obj,
                f"{path}.{key}",
                f"is {value}, the minimum is {minimum} (seed 003: a multi-node runtime spans >= 2 nodes)",
                f"set {key} >= {minimum}",
            )


def _check_env(obj: dict[str, Any], path: str, env: Any, bad: Any) -> None:
    name = env.get("name") if isinstance(env, dict) else None
    if name in ("TENSOR_PARALLEL_SIZE", "PIPELINE_PARALLEL_SIZE"):
        bad(
            obj,
            f"{path}.name",
            f"sets {name} as environment: KServe derives it from workerSpec and ignores or contradicts this (seed 003)",
            f"remove it; set workerSpec.{'tensor' if name.startswith('T') else 'pipeline'}ParallelSize",
        )


def _parallel(obj: dict[str, Any]) -> tuple[int | None, int | None]:
    """TP and PP an object runs: workerSpec for KServe, `vllm serve` arguments otherwise."""
    wspec = _get(obj, "spec.workerSpec")
    if isinstance(wspec, dict):
        tp, pp = wspec.get("tensorParallelSize"), wspec.get("pipelineParallelSize")
        return (tp if isinstance(tp, int) else None, pp if isinstance(pp, int) else None)
    for _path, pod, _replicas, role in pod_specs(obj):
        if role != "leader":
            continue
        for _ci, c in _containers(pod):
            text = " ".join(str(a) for a in (c.get("command") or []) + (c.get("args") or []))
            tp = re.search(r"--tensor-parallel-size[= ](\d+)", text)
            pp = re.search(r"--pipeline-parallel-size[= ](\d+)", text)
            if tp or pp:
                return (int(tp.group(1)) if tp else 1, int(pp.group(1)) if pp else 1)
    return (None, None)


def validate(objects: list[Any], schemas: dict[str, Any]) -> list[dict[str, str]]:
    """Every finding of a set of objects: schema errors of each, then our rules over all."""
    out: list[dict[str, str]] = []
    for obj in objects:
        out += validate_schema(obj, schemas)
    return out + check_rules(objects)
