# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kubernetes platform's renderer as filters for the k8s role."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: k8s_manifests
short_description: Render the Kubernetes objects of a multi-node vLLM deployment
description:
  - Turns the inventory's values (model, TP and PP from the plan, ports, dtype, images, Secret and
    PVC names) into a list of Kubernetes objects in one of three flavours - C(kserve)
    (ServingRuntime or ClusterServingRuntime and an InferenceService), C(lws) (LeaderWorkerSet and
    a Service) or C(kuberay) (RayCluster and a Service) - plus the model's ReadWriteMany PVC.
  - Secrets are referenced by name and key, never written.
  - Fails naming the inventory variable to change when an input is invalid.
  - The companion filters - C(k8s_yaml) writes one object as YAML (multi-line strings as literal
    blocks), C(k8s_file_names) names the file of each object.
author: multinode.vllm developers (@multinode)
options:
  _input:
    description:
      - The inputs - flavour, name, namespace, model, revision, served_model_name, image,
        tensor_parallel_size, pipeline_parallel_size, nodes, gpus_per_node, port, ray_port, dtype,
        max_model_len, gpu_memory_utilization, extra_args, extra_env, pvc_name, pvc_size,
        storage_class, model_path, api_key_secret, hf_token_secret, shm_size, gpu_resource (see the k8s role).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Render the manifests
  ansible.builtin.set_fact:
    k8s_objects: "{{ k8s_render_inputs | multinode.vllm.k8s_manifests }}"
"""

RETURN = r"""
_value:
  description: The objects in apply order (the PVC first).
  type: list
  elements: dict
"""

import yaml

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._k8s import RenderError, manifest_name, render


def k8s_manifests(inputs):
    if not isinstance(inputs, dict):
        raise AnsibleFilterError("k8s_manifests: the input must be a mapping, got %s" % type(inputs).__name__)
    try:
        return render(_plain(inputs))
    except RenderError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def k8s_yaml(obj):
    # plain dicts, lists and strings: Ansible's own string types are str subclasses
    return yaml.dump(_plain(obj), Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=120)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def k8s_file_names(objects):
    return [manifest_name(i + 1, obj) for i, obj in enumerate(objects)]


class FilterModule:
    def filters(self):
        return {"k8s_manifests": k8s_manifests, "k8s_yaml": k8s_yaml, "k8s_file_names": k8s_file_names}
