"""The kubernetes platform: render, offline validation (pinned schemas + our rules), the role and the CLI.

Render + validate of the three flavours for Llama 3.1 405B on 2 x 8 GPUs and for the test bed's
tiny model: no findings. Mutations (an unknown field, a wrong type, a missing required field, each
of seed 003's constraints and our rules broken): each caught, naming the field path.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from ansible_collections.multinode.vllm.plugins.module_utils import _k8s, _k8s_validate
from ansible_collections.multinode.vllm.plugins.module_utils._planner import load_config, plan
from ansible_collections.multinode.vllm.plugins.modules import k8s_validate

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "roles" / "k8s" / "files" / "schemas"
MODELS = ROOT / "tests" / "fixtures" / "models"
BIN = Path(sys.executable).parent
FLAVOURS = ("kserve", "lws", "kuberay")
GIB = 2**30


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    return _k8s_validate.load_schemas(str(SCHEMAS))


def inputs(flavour: str, model: str = "405b") -> dict[str, Any]:
    """The renderer's inputs with TP x PP from the planner, as the k8s role passes them."""
    if model == "405b":
        config, nodes, gpus, mem, dtype, name = "llama-3.1-405b", 2, 8, 80, "bfloat16", "llama-3.1-405b"
    else:  # the test bed (inventories/local): 1 GPU per node, 8 GiB
        config, nodes, gpus, mem, dtype, name = "tiny-llama", 2, 1, 8, "auto", "tiny-llama"
    p = plan(
        load_config(str(MODELS / config)),
        nodes=nodes,
        gpus_per_node=gpus,
        gpu_memory_bytes=mem * GIB,
        gpu_memory_utilization=0.95,
        max_model_len=8192 if model == "405b" else 512,
        dtype=dtype,
        pipeline_parallel_size=nodes,
    )
    assert p["fits"], p["reason"]
    return {
        "flavour": flavour,
        "model": f"meta-llama/{config}" if model == "405b" else "/srv/multinode-vllm/mnv/models/tiny-llama",
        "served_model_name": name,
        "namespace": "demo-multi-node-multi-gpu",
        "image": "vllm/vllm-openai:v0.17.1",
        "tensor_parallel_size": p["tensor_parallel_size"],
        "pipeline_parallel_size": p["pipeline_parallel_size"],
        "nodes": nodes,
        "gpus_per_node": gpus,
        "port": 8000,
        "ray_port": 6379,
        "dtype": dtype,
        "max_model_len": p["max_model_len"],
        "gpu_memory_utilization": 0.95,
        "extra_args": [],
        "extra_env": {},
        "pvc_name": "models",
        "model_path": f"models/{name}",
        "api_key_secret": {"name": "vllm-api-key", "key": "api-key"},
        "hf_token_secret": {"name": "hf-token", "key": "token"},
        "shm_size": "16Gi",
    }


@pytest.mark.parametrize("model", ["405b", "tiny"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_render_and_validate_clean(flavour: str, model: str, schemas: dict[str, Any]) -> None:
    objects = _k8s.render(inputs(flavour, model))
    findings = _k8s_validate.validate(objects, schemas)
    assert findings == [], [_k8s_validate.format_finding(f) for f in findings]
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "PersistentVolumeClaim"
    assert {"kserve": "InferenceService", "lws": "LeaderWorkerSet", "kuberay": "RayCluster"}[flavour] in kinds
    assert "Secret" not in kinds


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_405b_plan_is_tp8_pp2_and_pods_request_16_gpus(flavour: str) -> None:
    inp = inputs(flavour)
    assert (inp["tensor_parallel_size"], inp["pipeline_parallel_size"]) == (8, 2)
    objects = _k8s.render(inp)
    total = 0
    for obj in objects:
        for _path, pod, replicas, _role in _k8s_validate.pod_specs(obj):
            limits = pod["containers"][0]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "8"
            total += int(limits["nvidia.com/gpu"]) * replicas
    assert total == 16


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_secrets_only_by_reference(flavour: str) -> None:
    text = json.dumps(_k8s.render(inputs(flavour)))
    assert '"secretKeyRef": {"name": "vllm-api-key", "key": "api-key"}' in text
    for obj in _k8s.render(inputs(flavour)):
        for _path, pod, _n, _role in _k8s_validate.pod_specs(obj):
            for c in pod["containers"]:
                for e in c["env"]:
                    if e["name"] in ("VLLM_API_KEY", "HF_TOKEN"):
                        assert "value" not in e and "secretKeyRef" in e["valueFrom"]


def test_lws_follows_the_documented_recipe() -> None:
    lws = _k8s.render(inputs("lws"))[1]
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == 2
    leader = tmpl["leaderTemplate"]["spec"]["containers"][0]["args"][0]
    worker = tmpl["workerTemplate"]["spec"]["containers"][0]["args"][0]
    assert "ray start --head --port=6379" in leader and '"${LWS_GROUP_SIZE}"' in leader
    assert "exec vllm serve /mnt/models" in leader and "--tensor-parallel-size 8 --pipeline-parallel-size 2" in leader
    assert 'ray start "--address=${LWS_LEADER_ADDRESS}:6379"' in worker and "--block" in worker


def test_kserve_takes_tp_pp_from_workerspec_not_env() -> None:
    runtime, isvc = _k8s.render(inputs("kserve"))[1:]
    assert runtime["spec"]["workerSpec"]["tensorParallelSize"] == 8
    assert runtime["spec"]["workerSpec"]["pipelineParallelSize"] == 2
    head = runtime["spec"]["containers"][0]
    assert '--tensor-parallel-size "${TENSOR_PARALLEL_SIZE}"' in head["args"][0]
    assert not any(e["name"].endswith("PARALLEL_SIZE") for e in head["env"])
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "pvc://models/models/llama-3.1-405b"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"flavour": "helm"}, "k8s_flavour"),
        ({"nodes": 3}, "vllm_serve_pipeline_parallel_size"),
        ({"tensor_parallel_size": 16}, "vllm_serve_tensor_parallel_size"),
        ({"api_key_secret": None}, "k8s_api_key_secret"),
        ({"api_key_secret": {"name": "x"}}, "k8s_api_key_secret"),
        ({"model_path": "../etc"}, "k8s_model_path"),
        ({"name": "Llama_405B"}, "k8s_name"),
        ({"gpu_resource": "nvidia.com/mig-1g.10gb"}, "k8s_gpu_resource"),
        ({"image": ""}, "k8s_image"),
        ({"data_parallel_size": 2}, "vllm_serve_data_parallel_size"),
    ],
)
def test_render_refuses_bad_input_naming_the_variable(change: dict[str, Any], variable: str) -> None:
    with pytest.raises(_k8s.RenderError) as err:
        _k8s.render({**inputs("lws"), **change})
    assert err.value.variable == variable
    assert str(err.value).startswith(variable)


def test_kserve_needs_two_stages() -> None:
    inp = {**inputs("kserve"), "pipeline_parallel_size": 1, "nodes": 1}
    with pytest.raises(_k8s.RenderError, match="pipelineParallelSize"):
        _k8s.render(inp)


def test_open_endpoint_only_when_asked() -> None:
    objects = _k8s.render({**inputs("lws"), "api_key_secret": None, "api_open": True})
    assert "VLLM_API_KEY" not in json.dumps(objects)


# ------------------------------------------------------------------------------------ mutations

Mutation = Callable[[list[dict[str, Any]]], None]


def _lws(o: list[dict[str, Any]]) -> dict[str, Any]:
    return o[1]["spec"]["leaderWorkerTemplate"]


def _set(path: str, value: Any) -> Mutation:
    """Set a dotted path (list indexes as numbers) in object 1 (the flavour's main object)."""

    def mutate(objects: list[dict[str, Any]]) -> None:
        *parents, last = path.split(".")
        cur: Any = objects[1]
        for part in parents:
            cur = cur[int(part)] if part.isdigit() else cur[part]
        if value is _DELETE:
            del cur[int(last) if last.isdigit() else last]
        else:
            cur[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()


def _two_gpu_kinds(o: list[dict[str, Any]]) -> None:
    res = o[1]["spec"]["workerSpec"]["containers"][0]["resources"]
    res["requests"] = {"amd.com/gpu": "8"}
    res["limits"] = {"amd.com/gpu": "8"}


def _tp_env(o: list[dict[str, Any]]) -> None:
    o[1]["spec"]["workerSpec"]["containers"][0]["env"].append({"name": "TENSOR_PARALLEL_SIZE", "value": "8"})


def _annotation(key: str, value: str) -> Mutation:
    def mutate(o: list[dict[str, Any]]) -> None:
        o[2]["metadata"]["annotations"][key] = value  # the InferenceService

    return mutate


def _storage_uri(o: list[dict[str, Any]]) -> None:
    o[2]["spec"]["predictor"]["model"]["storageUri"] = "s3://bucket/llama"


def _rwo(o: list[dict[str, Any]]) -> None:
    o[0]["spec"]["accessModes"] = ["ReadWriteOnce"]


def _service_port_list(o: list[dict[str, Any]]) -> None:
    o[2]["spec"]["ports"][0]["targetPort"] = ["http"]


def _worker_probe(o: list[dict[str, Any]]) -> None:
    _lws(o)["workerTemplate"]["spec"]["containers"][0]["livenessProbe"] = {"httpGet": {"path": "/health", "port": 8000}}


def _gpu_req_ne_lim(o: list[dict[str, Any]]) -> None:
    _lws(o)["workerTemplate"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "4"


def _gpu_ne_tp(o: list[dict[str, Any]]) -> None:
    res = o[1]["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
    res["requests"]["nvidia.com/gpu"] = res["limits"]["nvidia.com/gpu"] = "4"


LWS_WORKER = "spec.leaderWorkerTemplate.workerTemplate.spec"
SCHEMA, RULE = _k8s_validate.SCHEMA, _k8s_validate.RULE

MUTATIONS: list[tuple[str, str, Mutation, str, str]] = [
    # id, flavour, mutation, expected path, source
    (
        "unknown-field",
        "lws",
        _set(f"{LWS_WORKER}.containers.0.resourcez", {}),
        f"{LWS_WORKER}.containers[0].resourcez",
        SCHEMA,
    ),
    ("unknown-field-metadata", "kserve", _set("metadata.label", {}), "metadata.label", SCHEMA),
    ("wrong-type", "lws", _set("spec.leaderWorkerTemplate.size", "2"), "spec.leaderWorkerTemplate.size", SCHEMA),
    ("wrong-type-int-or-string", "lws", _service_port_list, "spec.ports[0].targetPort", SCHEMA),
    (
        "missing-required",
        "kuberay",
        _set("spec.workerGroupSpecs.0.template.spec.containers.0.name", _DELETE),
        "spec.workerGroupSpecs[0].template.spec.containers[0].name",
        SCHEMA,
    ),
    (
        "missing-required-groupname",
        "kuberay",
        _set("spec.workerGroupSpecs.0.groupName", _DELETE),
        "spec.workerGroupSpecs[0].groupName",
        SCHEMA,
    ),
    (
        "enum",
        "lws",
        _set("spec.leaderWorkerTemplate.restartPolicy", "Always"),
        "spec.leaderWorkerTemplate.restartPolicy",
        SCHEMA,
    ),
    (
        "raw-deployment-only",
        "kserve",
        _annotation("serving.kserve.io/deploymentMode", "Serverless"),
        "metadata.annotations['serving.kserve.io/deploymentMode']",
        RULE,
    ),
    (
        "autoscaler-external",
        "kserve",
        _annotation("serving.kserve.io/autoscalerClass", "hpa"),
        "metadata.annotations['serving.kserve.io/autoscalerClass']",
        RULE,
    ),
    ("storage-uri-pvc", "kserve", _storage_uri, "spec.predictor.model.storageUri", RULE),
    ("rwx-pvc", "kserve", _rwo, "spec.accessModes", RULE),
    (
        "pp-missing",
        "kserve",
        _set("spec.workerSpec.pipelineParallelSize", _DELETE),
        "spec.workerSpec.pipelineParallelSize",
        RULE,
    ),
    (
        "tp-missing",
        "kserve",
        _set("spec.workerSpec.tensorParallelSize", _DELETE),
        "spec.workerSpec.tensorParallelSize",
        RULE,
    ),
    (
        "pp-below-2",
        "kserve",
        _set("spec.workerSpec.pipelineParallelSize", 1),
        "spec.workerSpec.pipelineParallelSize",
        RULE,
    ),
    ("tp-through-env", "kserve", _tp_env, "spec.workerSpec.containers[0].env[3].name", RULE),
    ("one-gpu-type", "kserve", _two_gpu_kinds, "spec.workerSpec.containers[0].resources", RULE),
    (
        "tp-x-pp-vs-gpus",
        "lws",
        _set("spec.leaderWorkerTemplate.size", 3),
        "spec.leaderWorkerTemplate.leaderTemplate.spec",
        RULE,
    ),
    ("gpu-requests-eq-limits", "lws", _gpu_req_ne_lim, f"{LWS_WORKER}.containers[0].resources", RULE),
    (
        "gpu-eq-tp",
        "kuberay",
        _gpu_ne_tp,
        "spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits['nvidia.com/gpu']",
        RULE,
    ),
    (
        "shm-size-limit",
        "lws",
        _set(f"{LWS_WORKER}.volumes.0.emptyDir", {"medium": "Memory"}),
        f"{LWS_WORKER}.volumes[0].emptyDir",
        RULE,
    ),
    (
        "shm-mounted",
        "kuberay",
        _set("spec.headGroupSpec.template.spec.containers.0.volumeMounts", []),
        "spec.headGroupSpec.template.spec.containers[0].volumeMounts",
        RULE,
    ),
    ("probe-on-worker", "lws", _worker_probe, f"{LWS_WORKER}.containers[0].livenessProbe", RULE),
    (
        "probe-on-leader",
        "lws",
        _set("spec.leaderWorkerTemplate.leaderTemplate.spec.containers.0.readinessProbe", _DELETE),
        "spec.leaderWorkerTemplate.leaderTemplate.spec.containers[0].readinessProbe",
        RULE,
    ),
]


@pytest.mark.parametrize(
    ("flavour", "mutate", "path", "source"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_mutation_is_caught_with_its_path(
    flavour: str, mutate: Mutation, path: str, source: str, schemas: dict[str, Any]
) -> None:
    objects = copy.deepcopy(_k8s.render(inputs(flavour)))
    mutate(objects)
    findings = _k8s_validate.validate(objects, schemas)
    assert findings, "the mutation went unnoticed"
    hits = [f for f in findings if f["path"] == path and f["source"] == source]
    messages = [_k8s_validate.format_finding(f) for f in findings]
    assert hits, messages
    text = _k8s_validate.format_finding(hits[0])
    assert "Fix: " in text and "/" in hits[0]["object"]
    if source == RULE:
        assert text.startswith("multinode.vllm rule: ")


def test_unknown_field_suggests_the_right_name(schemas: dict[str, Any]) -> None:
    objects = _k8s.render(inputs("lws"))
    _set(f"{LWS_WORKER}.containers.0.resourcez", {})(objects)
    (f,) = [f for f in _k8s_validate.validate(objects, schemas) if f["path"].endswith("resourcez")]
    assert f["object"] == "LeaderWorkerSet/llama-3-1-405b"
    assert "did you mean resources?" in f["fix"]


def test_preserve_unknown_fields_and_int_or_string() -> None:
    defs: dict[str, Any] = {}
    schema = {
        "type": "object",
        "properties": {
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        },
    }
    walker = _k8s_validate._Walker({"kind": "X", "metadata": {"name": "x"}}, defs)
    walker.check({"free": {"anything": [1, {"goes": True}]}, "port": 8000}, schema, "")
    walker.check({"port": "http"}, schema, "")
    assert walker.errors == []
    walker.check({"port": 1.5, "other": 1}, schema, "")
    assert [e["path"] for e in walker.errors] == ["port", "other"]


def test_unknown_kind_is_an_error(schemas: dict[str, Any]) -> None:
    obj = {"apiVersion": "serving.kserve.io/v1", "kind": "InferenceService", "metadata": {"name": "x"}}
    (f,) = _k8s_validate.validate_schema(obj, schemas)
    assert f["path"] == "apiVersion" and "serving.kserve.io/v1beta1" in f["fix"]


# --------------------------------------------------------------------------------- the module


def write(tmp_path: Path, objects: list[dict[str, Any]]) -> Path:
    out = tmp_path / "manifests"
    out.mkdir()
    for i, obj in enumerate(objects):
        (out / _k8s.manifest_name(i + 1, obj)).write_text(yaml.safe_dump(obj))
    return out


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        k8s_validate.main()
    return json.loads(capsys.readouterr().out)


def test_module_passes_rendered_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = write(tmp_path, _k8s.render(inputs("kuberay")))
    res = run_module({"path": str(out), "schema_dir": str(SCHEMAS), "_ansible_check_mode": True}, capsys)
    assert not res.get("failed"), res
    assert res["objects"] == ["PersistentVolumeClaim/models", "RayCluster/llama-3-1-405b", "Service/llama-3-1-405b"]
    assert res["errors"] == [] and res["changed"] is False


def test_module_fails_naming_object_path_and_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    objects = _k8s.render(inputs("kserve"))
    _rwo(objects)
    objects[2]["spec"]["predictor"]["model"]["storageUri"] = "hf://meta-llama/Llama-3.1-405B"
    out = write(tmp_path, objects)
    res = run_module({"path": str(out), "schema_dir": str(SCHEMAS)}, capsys)
    assert res["failed"]
    assert "2 problem(s) in 3 Kubernetes objects" in res["msg"]
    assert "multinode.vllm rule: InferenceService/llama-3-1-405b: spec.predictor.model.storageUri" in res["msg"]
    assert "PersistentVolumeClaim/models: spec.accessModes" in res["msg"]


def test_module_objects_without_failing(capsys: pytest.CaptureFixture[str]) -> None:
    objects = _k8s.render(inputs("lws"))
    objects[1]["spec"]["leaderWorkerTemplate"]["size"] = "two"
    res = run_module({"objects": objects, "schema_dir": str(SCHEMAS), "fail_on_error": False, "rules": False}, capsys)
    assert not res.get("failed")
    assert [e["path"] for e in res["errors"]] == ["spec.leaderWorkerTemplate.size"]


def test_module_bad_schema_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = run_module({"objects": [], "schema_dir": str(tmp_path / "nope")}, capsys)
    assert res["failed"] and "is not a directory" in res["msg"]


# ------------------------------------------------------------------- the schemas in the repository


def test_schemas_readme_names_sources_and_licence() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    for needle in (
        "Apache",
        "060ab4da17eea1f0865fcbd3236bb1075e2cea32",
        "aaac4e294dae2c7b1aa1886447793f3aa1c30912",
        "feeaf72facab4881ba2b179248bb67315634e229",
        "kubernetes-validate",
    ):
        assert needle in readme


CRDS = Path(os.environ.get("MULTINODE_K8S_CRDS", ROOT.parent / "shared" / "k8s-crds"))


@pytest.mark.skipif(not CRDS.is_dir(), reason="the pinned CRD snapshot (../shared/k8s-crds) is not here")
def test_schemas_match_the_pinned_crds(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes_validate")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "k8s_schemas.py"), "--crds", str(CRDS), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for path in sorted(SCHEMAS.glob("*.json")):
        assert (tmp_path / path.name).read_text() == path.read_text(), f"{path.name} differs from the pinned source"


# ----------------------------------------------------------------------- the role, playbook, CLI


def ansible_playbook(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{BIN}:{os.environ['PATH']}",
    )
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "playbooks/k8s.yml", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_playbook_renders_and_validates_the_seed_inventory(tmp_path: Path) -> None:
    out = tmp_path / "m"
    res = ansible_playbook("-i", "inventories/kubernetes-kserve", "-e", f"k8s_out_dir={out}")
    assert res.returncode == 0, res.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "01-persistentvolumeclaim-models.yaml",
        "02-servingruntime-llama-3-1-405b-runtime.yaml",
        "03-inferenceservice-llama-3-1-405b.yaml",
    ]
    runtime = yaml.safe_load((out / "02-servingruntime-llama-3-1-405b-runtime.yaml").read_text())
    assert runtime["spec"]["workerSpec"]["tensorParallelSize"] == 8
    # a rerun changes nothing; another flavour replaces the files
    res = ansible_playbook("-i", "inventories/kubernetes-kserve", "-e", f"k8s_out_dir={out}")
    assert "changed=0" in res.stdout, res.stdout[-2000:]
    res = ansible_playbook("-i", "inventories/kubernetes-kserve", "-e", f"k8s_out_dir={out}", "-e", "k8s_flavour=lws")
    assert res.returncode == 0, res.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "01-persistentvolumeclaim-models.yaml",
        "02-leaderworkerset-llama-3-1-405b.yaml",
        "03-service-llama-3-1-405b.yaml",
    ]


def test_apply_check_mode_without_api_server_names_the_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}
                ],
                "contexts": [{"name": "nowhere", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "nowhere",
                "users": [{"name": "u", "user": {"token": "not-a-token"}}],
            }
        )
    )
    res = ansible_playbook(
        "-i", "inventories/kubernetes-kserve", "--check",
        "-e", f"k8s_out_dir={tmp_path / 'm'}", "-e", f"k8s_kubeconfig={kubeconfig}", "-e", "k8s_context=nowhere",
    )  # fmt: skip
    text = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"No Kubernetes API server answered through k8s_kubeconfig={kubeconfig} (context nowhere)" in text
    assert "Traceback" not in text
    assert "Nothing was applied" in text


def test_cli_render_tiny_model_of_the_test_bed(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    env = dict(os.environ, CI="true", PATH=f"{BIN}:{os.environ['PATH']}")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "multinode_vllm",
            "render",
            "-i",
            "inventories/local",
            "--out",
            str(out),
            "--flavour",
            "lws",
            "--no-apply",
        ],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    lws = yaml.safe_load((out / "02-leaderworkerset-tiny-llama.yaml").read_text())
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert (
        "--tensor-parallel-size 1 --pipeline-parallel-size 2"
        in lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]["args"][0]
    )
