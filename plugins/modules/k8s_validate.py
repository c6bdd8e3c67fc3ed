#!/usr/bin/python
# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: k8s_validate
short_description: Check Kubernetes manifests offline against pinned schemas and multinode.vllm's rules
description:
  - Reads the objects of O(path) (a manifest file or a directory of C(*.yaml)/C(*.yml) files, several
    documents each) or O(objects), and checks every one against its schema, strictly - an unknown
    field, a wrong type, a missing required field or a value outside an enum is an error naming the
    object (Kind/name), the field path and the fix.
  - Custom resources (KServe ServingRuntime, ClusterServingRuntime, InferenceService; LeaderWorkerSet;
    KubeRay RayCluster, RayService) are checked against the C(spec.versions[].schema.openAPIV3Schema)
    of the pinned upstream CRD whose version the object's apiVersion names; built-in kinds (Service,
    PersistentVolumeClaim) against the Kubernetes OpenAPI schemas. Both are in O(schema_dir).
  - Then, with O(rules), what no schema says, each message prefixed C(multinode.vllm rule) - KServe's
    multi-node constraints (RawDeployment, autoscaler external, C(pvc://) storage on a ReadWriteMany
    claim, tensorParallelSize and pipelineParallelSize in workerSpec with PP >= 2, neither as an
    environment variable, one GPU resource type), TP x PP against the GPUs the pods request, GPU
    requests equal to limits equal to TP per pod, a memory /dev/shm with a size limit, probes on the
    leader only.
  - Not checked (no API server here) - CEL rules (C(x-kubernetes-validations)), admission webhooks,
    defaulting, scheduling, and whether the referenced Secrets, claims and images exist.
author: multinode.vllm developers (@multinode)
attributes:
  check_mode:
    support: full
    description: Only reads.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  path:
    description: A manifest file or a directory of them. Mutually exclusive with O(objects).
    type: path
  objects:
    description: The objects themselves. Mutually exclusive with O(path).
    type: list
    elements: dict
  schema_dir:
    description: The directory of extracted schemas (the k8s role's C(files/schemas)).
    type: path
    required: true
  rules:
    description: Also check multinode.vllm's own rules (after the schemas).
    type: bool
    default: true
  fail_on_error:
    description: Fail when anything is found; false returns the findings only.
    type: bool
    default: true
requirements:
  - PyYAML (for O(path); it comes with ansible-core)
"""

EXAMPLES = r"""
- name: Check the rendered manifests
  multinode.vllm.k8s_validate:
    path: /tmp/manifests
    schema_dir: "{{ role_path }}/files/schemas"

- name: Check objects without failing
  multinode.vllm.k8s_validate:
    objects: "{{ k8s_objects }}"
    schema_dir: "{{ role_path }}/files/schemas"
    fail_on_error: false
  register: k8s_findings
"""

RETURN = r"""
objects:
  description: Kind/name of every object checked, in order.
  returned: always
  type: list
  elements: str
errors:
  description: One finding per problem - object, path, message, fix, source (C(schema) or C(multinode.vllm rule)).
  returned: always
  type: list
  elements: dict
messages:
  description: The findings as sentences (C(Kind/name - path - message. Fix - ...)).
  returned: always
  type: list
  elements: str
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.multinode.vllm.plugins.module_utils._k8s_validate import (
    SchemaError,
    check_rules,
    format_finding,
    load_schemas,
    object_name,
    validate_schema,
)

try:
    import yaml

    HAS_YAML = True
    YAML_ERROR = None
except ImportError:
    HAS_YAML = False
    YAML_ERROR = traceback.format_exc()


def read_objects(path):
    """The objects of a file or of the *.yaml/*.yml files of a directory (sorted by name)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".yaml", ".yml")))
    else:
        files = [path]
    objects = []
    for name in files:
        with open(name, encoding="utf-8") as fh:
            objects.extend(doc for doc in yaml.safe_load_all(fh) if doc is not None)
    return files, objects


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            objects=dict(type="list", elements="dict"),
            schema_dir=dict(type="path", required=True),
            rules=dict(type="bool", default=True),
            fail_on_error=dict(type="bool", default=True),
        ),
        mutually_exclusive=[("path", "objects")],
        required_one_of=[("path", "objects")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        schemas = load_schemas(p["schema_dir"])
    except SchemaError as exc:
        module.fail_json(msg=str(exc))
    if p["path"] is not None:
        if not HAS_YAML:
            module.fail_json(msg=missing_required_lib("PyYAML"), exception=YAML_ERROR)
        if not os.path.exists(p["path"]):
            module.fail_json(msg="path %s does not exist: render the manifests first (playbooks/k8s.yml)" % p["path"])
        try:
            files, objects = read_objects(p["path"])
        except (OSError, yaml.YAMLError) as exc:
            module.fail_json(msg="cannot read the manifests in %s: %s" % (p["path"], exc))
        if not objects:
            module.fail_json(msg="no objects in %s (%d files): render the manifests first" % (p["path"], len(files)))
    else:
        objects = p["objects"]
    try:
        errors = []
        for obj in objects:
            errors.extend(validate_schema(obj, schemas))
        if p["rules"]:
            errors.extend(check_rules(objects))
    except SchemaError as exc:
        module.fail_json(msg=str(exc))
    messages = [format_finding(e) for e in errors]
    result = dict(changed=False, objects=[object_name(o) for o in objects], errors=errors, messages=messages)
    if errors and p["fail_on_error"]:
        module.fail_json(
            msg="%d problem(s) in %d Kubernetes objects: %s" % (len(errors), len(objects), " | ".join(messages)),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
