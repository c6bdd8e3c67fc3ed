# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kubernetes platform: the manifests of one multi-node vLLM deployment, as data.

Pure functions, stdlib only. ``render(inputs)`` turns the inventory's values (the same names the
hosts platform reads: multinode_model, vllm_serve_tensor_parallel_size, ...; the k8s role maps
them) and the planner's TP x PP into a list of Kubernetes objects (dicts), in one of three
flavours:

* ``kserve``: a ServingRuntime (or ClusterServingRuntime) whose ``workerSpec`` carries
  tensorParallelSize and pipelineParallelSize, and an InferenceService in RawDeployment mode with
  the model on a ReadWriteMany PVC (``storageUri: pvc://``), the way seed 003 deploys it;
* ``lws``: a LeaderWorkerSet of ``size`` = pipeline stages, the leader starting the Ray head and
  then ``vllm serve``, the workers joining ``$LWS_LEADER_ADDRESS`` (vLLM's documented recipe),
  plus a Service on the leader;
* ``kuberay``: a RayCluster (head + one worker group) whose head runs ``vllm serve`` once Ray has
  every node, plus a Service on the head.

One pipeline stage per pod: each pod requests TP GPUs and the group has PP pods, so TP x PP is what
the pods request (``check_rules`` in _k8s_validate re-checks that on the rendered objects). Secrets
are only referenced (``secretKeyRef``): the API key and the Hugging Face token never appear in a
manifest.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

FLAVOURS = ("kserve", "lws", "kuberay")
RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")
#: The GPU resource names KServe's multi-node runtime accepts (seed 003, "Supported GPU Types").
GPU_RESOURCES = ("nvidia.com/gpu", "intel.com/gpu", "amd.com/gpu", "habana.ai/gaudi")
#: Where the model's PVC is mounted in every pod (KServe's own mount point for storageUri).
MODEL_MOUNT = "/mnt/models"
SHM_VOLUME = "dshm"
LABEL_PREFIX = "multinode.vllm"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class RenderError(ValueError):
    """Bad input, naming the inventory variable and the fix."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class ShellVar(str):
    """A shell variable reference (``"${NAME}"``) among the tokens of a command line."""


class Expand(str):
    """A token the shell expands (written in double quotes: ``"--address=${HEAD}:6379"``)."""


def _token(t: Any) -> str:
    if isinstance(t, ShellVar):
        return f'"${{{t}}}"'
    if isinstance(t, Expand):
        return f'"{t}"'
    return shlex.quote(str(t))


def shell_line(tokens: list[Any]) -> str:
    """One shell command line: literals quoted, ShellVar and Expand tokens expanded (in double quotes)."""
    return " ".join(_token(t) for t in tokens)


def dns_name(value: str) -> str:
    """A DNS-1123 label from a model name: lower case, [a-z0-9-], at most 40 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", value.rsplit("/", 1)[-1].lower()).strip("-")
    return name[:40].rstrip("-") or "vllm"


def _int(inputs: dict[str, Any], key: str, variable: str, minimum: int = 1) -> int:
    value = inputs.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RenderError(variable, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _secret_ref(ref: Any, variable: str) -> dict[str, Any] | None:
    if not ref:
        return None
    if not isinstance(ref, dict) or not ref.get("name") or not ref.get("key"):
        raise RenderError(variable, f"must be a mapping with name and key (a Secret and its key), got {ref!r}")
    return {"name": str(ref["name"]), "key": str(ref["key"])}


def normalise(inputs: dict[str, Any]) -> dict[str, Any]:
    """Check the inputs and fill the derived values (RenderError names the variable to fix)."""
    out = dict(inputs)
    flavour = out.get("flavour")
    if flavour not in FLAVOURS:
        raise RenderError("k8s_flavour", f"unknown flavour {flavour!r}: use one of {', '.join(FLAVOURS)}")
    out["tensor_parallel_size"] = tp = _int(out, "tensor_parallel_size", "vllm_serve_tensor_parallel_size")
    out["pipeline_parallel_size"] = pp = _int(out, "pipeline_parallel_size", "vllm_serve_pipeline_parallel_size")
    nodes = _int(out, "nodes", "k8s_nodes")
    dp = _int({"dp": out.get("data_parallel_size", 1)}, "dp", "vllm_serve_data_parallel_size")
    if dp != 1:
        raise RenderError(
            "vllm_serve_data_parallel_size",
            f"is {dp}, but the kubernetes platform renders one replica (TP x PP over the pods of one group); "
            "vLLM's data parallel across pods is not rendered. Fix: leave vllm_serve_data_parallel_size unset (1) "
            "for this platform, or serve data parallel on hosts (playbooks/serve.yml)",
        )
    gpus = _int(out, "gpus_per_node", "validate_gpus_per_node")
    if pp != nodes:
        raise RenderError(
            "vllm_serve_pipeline_parallel_size",
            f"is {pp} but k8s_nodes is {nodes}: the kubernetes platform runs one pipeline stage per pod "
            f"(a pod per node). Fix: set vllm_serve_pipeline_parallel_size={nodes}, or k8s_nodes={pp}",
        )
    if tp > gpus:
        raise RenderError(
            "vllm_serve_tensor_parallel_size",
            f"is {tp} but a node has {gpus} GPUs (validate_gpus_per_node): a pod requests TP GPUs of one node. "
            f"Fix: vllm_serve_tensor_parallel_size <= {gpus}",
        )
    if flavour == "kserve" and pp < 2:
        raise RenderError(
            "vllm_serve_pipeline_parallel_size",
            "must be >= 2 for KServe's multi-node runtime (workerSpec.pipelineParallelSize, seed 003); "
            "Fix: 2 or more nodes, or a single-node InferenceService outside this collection",
        )
    for key, variable in (("port", "multinode_vllm_port"), ("ray_port", "multinode_ray_port")):
        port = _int(out, key, variable)
        if port > 65535:
            raise RenderError(variable, f"must be a port (1-65535), got {port}")
    name = out.get("name") or dns_name(str(out.get("served_model_name") or out.get("model") or "vllm"))
    if not _DNS1123.match(name) or len(name) > 40:
        raise RenderError("k8s_name", f"{name!r} is not a DNS-1123 label of at most 40 characters: use e.g. llama-405b")
    out["name"] = name
    namespace = str(out.get("namespace") or "default")
    if not _DNS1123.match(namespace):
        raise RenderError("k8s_namespace", f"{namespace!r} is not a DNS-1123 label")
    out["namespace"] = namespace
    out["served_model_name"] = str(out.get("served_model_name") or out.get("model") or name)
    if out.get("runtime_kind", "ServingRuntime") not in RUNTIME_KINDS:
        raise RenderError("k8s_kserve_runtime_kind", f"use one of {', '.join(RUNTIME_KINDS)}")
    out.setdefault("runtime_kind", "ServingRuntime")
    gpu = out.get("gpu_resource") or "nvidia.com/gpu"
    if gpu not in GPU_RESOURCES:
        raise RenderError("k8s_gpu_resource", f"{gpu!r}: use one of {', '.join(GPU_RESOURCES)}")
    out["gpu_resource"] = gpu
    if not out.get("image"):
        raise RenderError("k8s_image", "is empty: name the vLLM image with Ray, e.g. vllm/vllm-openai:v0.17.1")
    if not str(out.get("pvc_name") or ""):
        raise RenderError("k8s_pvc_name", "is empty: name the ReadWriteMany PVC that holds the model")
    model_path = str(out.get("model_path") or "").strip("/")
    if not model_path or ".." in model_path.split("/"):
        raise RenderError(
            "k8s_model_path", f"{model_path!r}: give the model's directory inside the PVC, e.g. models/llama"
        )
    out["model_path"] = model_path
    out["api_key_secret"] = _secret_ref(out.get("api_key_secret"), "k8s_api_key_secret")
    out["hf_token_secret"] = _secret_ref(out.get("hf_token_secret"), "k8s_hf_token_secret")
    if out["api_key_secret"] is None and not out.get("api_open"):
        raise RenderError(
            "k8s_api_key_secret",
            "is empty and multinode_api_open is false: the endpoint would be open. Fix: name the Secret holding "
            "the API key ({name: vllm-api-key, key: api-key}), or multinode_api_open=true to serve without one",
        )
    out.setdefault("api_key_env", "VLLM_API_KEY")
    out.setdefault("shm_size", "16Gi")
    out.setdefault("pvc_size", "1Ti")
    out.setdefault("extra_args", [])
    out.setdefault("extra_env", {})
    return out


def _labels(inp: dict[str, Any], component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "multinode-vllm",
        "app.kubernetes.io/instance": inp["name"],
        "app.kubernetes.io/component": component,
    }


def _meta(inp: dict[str, Any], name: str, component: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespaced:
        meta["namespace"] = inp["namespace"]
    meta["labels"] = _labels(inp, component)
    meta["annotations"] = {f"{LABEL_PREFIX}/model": str(inp.get("model") or "")}
    if inp.get("revision") and inp["revision"] != "main":
        meta["annotations"][f"{LABEL_PREFIX}/model-revision"] = str(inp["revision"])
    return meta


def vllm_command(inp: dict[str, Any], tp: Any, pp: Any) -> list[Any]:
    """`vllm serve` on the Ray cluster, the hosts platform's arguments (vllm_serve_*)."""
    cmd: list[Any] = ["vllm", "serve", MODEL_MOUNT, "--served-model-name", inp["served_model_name"]]
    cmd += ["--host", "0.0.0.0", "--port", inp["port"]]
    cmd += ["--tensor-parallel-size", tp, "--pipeline-parallel-size", pp, "--distributed-executor-backend", "ray"]
    if inp.get("dtype") and inp["dtype"] != "auto":
        cmd += ["--dtype", inp["dtype"]]
    if inp.get("max_model_len"):
        cmd += ["--max-model-len", inp["max_model_len"]]
    if inp.get("gpu_memory_utilization"):
        cmd += ["--gpu-memory-utilization", inp["gpu_memory_utilization"]]
    if inp.get("max_num_seqs"):
        cmd += ["--max-num-seqs", inp["max_num_seqs"]]
    if inp.get("max_num_batched_tokens"):
        cmd += ["--max-num-batched-tokens", inp["max_num_batched_tokens"]]
    if inp.get("enforce_eager"):
        cmd.append("--enforce-eager")
    if inp.get("trust_remote_code"):
        cmd.append("--trust-remote-code")
    if inp.get("load_strategy"):
        cmd += ["--safetensors-load-strategy", inp["load_strategy"]]
    return cmd + [str(a) for a in inp["extra_args"]]


def _wait_for_nodes(count: Any) -> str:
    """A bounded wait (10 minutes) until Ray counts `count` live nodes, else exit 1."""
    probe = 'import ray; ray.init(address="auto", logging_level="ERROR"); print(sum(n["Alive"] for n in ray.nodes()))'
    want = f"${{{count}}}" if isinstance(count, ShellVar) else str(int(count))
    return (
        f"n=0; for i in $(seq 120); do n=$(python3 -c {shlex.quote(probe)} 2>/dev/null || echo 0)\n"
        f'  [ "$n" -ge "{want}" ] && break; echo "Ray has $n of {want} nodes"; sleep 5\n'
        f"done\n"
        f'[ "$n" -ge "{want}" ] || {{ echo "Ray has $n of {want} nodes after 10 minutes" >&2; exit 1; }}'
    )


def leader_script(inp: dict[str, Any], tp: Any, pp: Any, nodes: Any) -> str:
    """Ray head, wait for every node, then exec vllm serve (the leader / head pod's command)."""
    head = ["ray", "start", "--head", f"--port={inp['ray_port']}", f"--num-gpus={inp['tensor_parallel_size']}"]
    head += ["--disable-usage-stats", "--dashboard-host=127.0.0.1"]
    return "\n".join(
        ["set -eu", shell_line(head), _wait_for_nodes(nodes), "exec " + shell_line(vllm_command(inp, tp, pp)), ""]
    )


def worker_script(inp: dict[str, Any], head_address: str) -> str:
    """Join the Ray head at head_address (a shell expression), bounded: 10 minutes of tries."""
    address = f"{head_address}:{inp['ray_port']}"
    join = ["ray", "start", Expand(f"--address={address}"), f"--num-gpus={inp['tensor_parallel_size']}", "--block"]
    return "\n".join(
        [
            "set -u",
            f'for i in $(seq 120); do ray health-check --address "{address}" >/dev/null 2>&1 && break',
            f'  echo "waiting for the Ray head at {address}"; sleep 5',
            "done",
            "exec " + shell_line(join),
            "",
        ]
    )


def _env(inp: dict[str, Any], leader: bool) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if inp["hf_token_secret"]:
        ref = dict(inp["hf_token_secret"], optional=True)
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    if leader and inp["api_key_secret"]:
        env.append({"name": inp["api_key_env"], "valueFrom": {"secretKeyRef": dict(inp["api_key_secret"])}})
    env += [{"name": str(k), "value": str(v)} for k, v in sorted(inp["extra_env"].items())]
    return env


def _resources(inp: dict[str, Any]) -> dict[str, Any]:
    amount = str(inp["tensor_parallel_size"])
    requests: dict[str, str] = {inp["gpu_resource"]: amount}
    limits: dict[str, str] = {inp["gpu_resource"]: amount}
    for key in ("cpu", "memory"):
        if inp.get(key):
            requests[key] = str(inp[key])
            limits[key] = str(inp[key])
    return {"requests": requests, "limits": limits}


def _mounts(inp: dict[str, Any], model: bool = True) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    if model:
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "subPath": inp["model_path"], "readOnly": True})
    return mounts


def _volumes(inp: dict[str, Any], model: bool = True) -> list[dict[str, Any]]:
    vols: list[dict[str, Any]] = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": inp["shm_size"]}}]
    if model:
        vols.append({"name": "model", "persistentVolumeClaim": {"claimName": inp["pvc_name"], "readOnly": True}})
    return vols


def _probe(inp: dict[str, Any]) -> dict[str, Any]:
    # /health answers without the API key; loading 405B takes long: the probe waits, it does not kill.
    return {"httpGet": {"path": "/health", "port": inp["port"]}, "periodSeconds": 10, "failureThreshold": 6}


def _container(inp: dict[str, Any], name: str, script: str, leader: bool, model: bool = True) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": inp["image"],
        "command": ["/bin/bash", "-c"],
        "args": [script],
        "env": _env(inp, leader),
        "resources": _resources(inp),
        "volumeMounts": _mounts(inp, model),
    }
    if leader:
        container["ports"] = [{"name": "http", "containerPort": inp["port"], "protocol": "TCP"}]
        container["readinessProbe"] = _probe(inp)
        container["startupProbe"] = dict(_probe(inp), failureThreshold=int(inp.get("startup_timeout", 3600)) // 10)
    return container


def _pod_spec(inp: dict[str, Any], container: dict[str, Any], model: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container], "volumes": _volumes(inp, model)}
    if inp.get("node_selector"):
        spec["nodeSelector"] = {str(k): str(v) for k, v in inp["node_selector"].items()}
    if inp.get("tolerations"):
        spec["tolerations"] = list(inp["tolerations"])
    return spec


def pvc(inp: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": str(inp["pvc_size"])}},
    }
    if inp.get("storage_class"):
        spec["storageClassName"] = str(inp["storage_class"])
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(inp, inp["pvc_name"], "model"),
        "spec": spec,
    }


def service(inp: dict[str, Any], selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(inp, inp["name"], "endpoint"),
        "spec": {
            "type": str(inp.get("service_type") or "ClusterIP"),
            "selector": selector,
            "ports": [{"name": "http", "port": inp["port"], "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_kserve(inp: dict[str, Any]) -> list[dict[str, Any]]:
    tp, pp = inp["tensor_parallel_size"], inp["pipeline_parallel_size"]
    # KServe injects TENSOR_PARALLEL_SIZE / PIPELINE_PARALLEL_SIZE from workerSpec (never set them as env).
    tp_var, pp_var = ShellVar("TENSOR_PARALLEL_SIZE"), ShellVar("PIPELINE_PARALLEL_SIZE")
    runtime_name = f"{inp['name']}-runtime"
    # KServe mounts storageUri at /mnt/models itself: no model volume of ours.
    head = _container(inp, "kserve-container", leader_script(inp, tp_var, pp_var, pp_var), True, model=False)
    worker = _container(
        inp,
        "worker-container",
        worker_script(inp, "${HEAD_SVC}.${POD_NAMESPACE}.svc.cluster.local"),
        False,
        model=False,
    )
    namespaced = inp["runtime_kind"] == "ServingRuntime"
    runtime = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": inp["runtime_kind"],
        "metadata": _meta(inp, runtime_name, "runtime", namespaced=namespaced),
        "spec": {
            "supportedModelFormats": [{"name": "vLLM", "autoSelect": True, "priority": 2}],
            "multiModel": False,
            "containers": [head],
            "volumes": _volumes(inp, model=False),
            "workerSpec": {
                "tensorParallelSize": tp,
                "pipelineParallelSize": pp,
                "containers": [worker],
                "volumes": _volumes(inp, model=False),
            },
        },
    }
    isvc_meta = _meta(inp, inp["name"], "inference")
    isvc_meta["annotations"].update(
        {"serving.kserve.io/deploymentMode": "RawDeployment", "serving.kserve.io/autoscalerClass": "external"}
    )
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": isvc_meta,
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "vLLM"},
                    "runtime": runtime_name,
                    "storageUri": f"pvc://{inp['pvc_name']}/{inp['model_path']}",
                    "resources": _resources(inp),
                },
                "workerSpec": {"tensorParallelSize": tp, "pipelineParallelSize": pp, "resources": _resources(inp)},
            }
        },
    }
    return [runtime, isvc]


def render_lws(inp: dict[str, Any]) -> list[dict[str, Any]]:
    tp, pp = inp["tensor_parallel_size"], inp["pipeline_parallel_size"]
    leader = _container(inp, "vllm-leader", leader_script(inp, tp, pp, ShellVar("LWS_GROUP_SIZE")), True)
    worker = _container(inp, "vllm-worker", worker_script(inp, "${LWS_LEADER_ADDRESS}"), False)
    lws = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": _meta(inp, inp["name"], "serving"),
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": pp,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {"metadata": {"labels": {"role": "leader"}}, "spec": _pod_spec(inp, leader)},
                "workerTemplate": {"spec": _pod_spec(inp, worker)},
            },
        },
    }
    selector = {"leaderworkerset.sigs.k8s.io/name": inp["name"], "role": "leader"}
    return [lws, service(inp, selector)]


def render_kuberay(inp: dict[str, Any]) -> list[dict[str, Any]]:
    tp, pp = inp["tensor_parallel_size"], inp["pipeline_parallel_size"]
    # ray.io/overwrite-container-cmd: KubeRay leaves the command to us and hands its own `ray start`
    # in $KUBERAY_GEN_RAY_START_CMD; ours starts Ray with the same ports, so that is unused here.
    head = _container(inp, "ray-head", leader_script(inp, tp, pp, pp), True)
    worker = _container(inp, "ray-worker", worker_script(inp, "${RAY_HEAD_SERVICE}"), False)
    worker["env"].insert(
        0, {"name": "RAY_HEAD_SERVICE", "value": f"{inp['name']}-head-svc.{inp['namespace']}.svc.cluster.local"}
    )
    meta = _meta(inp, inp["name"], "serving")
    meta["annotations"]["ray.io/overwrite-container-cmd"] = "true"
    start = {"num-gpus": str(tp), "dashboard-host": "127.0.0.1"}
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": meta,
        "spec": {
            "headGroupSpec": {"rayStartParams": dict(start), "template": {"spec": _pod_spec(inp, head)}},
            "workerGroupSpecs": [
                {
                    "groupName": "gpu-workers",
                    "replicas": pp - 1,
                    "minReplicas": pp - 1,
                    "maxReplicas": pp - 1,
                    "rayStartParams": {"num-gpus": str(tp)},
                    "template": {"spec": _pod_spec(inp, worker)},
                }
            ],
        },
    }
    selector = {"ray.io/cluster": inp["name"], "ray.io/node-type": "head"}
    return [cluster, service(inp, selector)]


def render(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects of one deployment, in apply order (PVC first); RenderError on bad input."""
    inp = normalise(inputs)
    objects: list[dict[str, Any]] = [pvc(inp)] if inp.get("pvc_create", True) else []
    if inp["flavour"] == "kserve":
        objects += render_kserve(inp)
    elif inp["flavour"] == "lws":
        objects += render_lws(inp)
    else:
        objects += render_kuberay(inp)
    return objects


def manifest_name(index: int, obj: dict[str, Any]) -> str:
    """The file one object is written to: ordered, kind and name (``01-persistentvolumeclaim-models.yaml``)."""
    return f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
