#!/usr/bin/python
# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: node_setup
short_description: A node's shared set-up in one call (configuration directory, venv check, Ray token)
version_added: "0.2.0"
description:
  - One round trip per node where the role ran three (a C(file), a C(command) and a C(copy), which
    is two round trips itself), at the start of every phase.
  - Creates O(config_dir) (root, mode 0755) when it is missing.
  - With O(venv), says which of C(ray), C(vllm) and C(python) its C(bin) lacks and reads Ray's
    version with the venv's Python.
  - With O(token_path), writes O(token) there (root, mode 0600) when the content or the mode
    differs. With O(token_min_ray_version) and O(venv), only when the venv's Ray is that version or
    later (token authentication needs it; the role then stops with the fix, and nothing was written).
  - Reads the size, use and free space of C(/dev/shm) (what C(df) shows), for the phases' check
    that Ray's object store and vLLM's queues fit there.
  - Supports check mode (reports what it would change) and diff mode (never the token).
options:
  config_dir:
    description: The configuration directory.
    type: path
    required: true
  venv:
    description: The venv that holds Ray and vLLM (native runtime); omit to skip the check.
    type: path
  token:
    description: The Ray auth token (written to O(token_path); never logged).
    type: str
  token_path:
    description: Where the token goes; omit to write none.
    type: path
  token_min_ray_version:
    description: The Ray version token authentication needs (compared with the venv's).
    type: str
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Set up the node
  multinode.vllm.node_setup:
    config_dir: /etc/multinode-vllm
    venv: /opt/multinode-vllm/venv
    token: "{{ vault_ray_token }}"
    token_path: /etc/multinode-vllm/ray-auth-token
    token_min_ray_version: "2.52.0"
"""

RETURN = r"""
venv_missing:
  description: What the venv's bin lacks, of ray, vllm and python (empty without O(venv)).
  type: list
  elements: str
  returned: always
ray_version:
  description: Ray's version in the venv; empty when it could not be read or without O(venv).
  type: str
  returned: always
created:
  description: The paths this call created or rewrote (the configuration directory, the token file).
  type: list
  elements: str
  returned: always
token_written:
  description: Whether the token file holds the token now (or would, in check mode).
  type: bool
  returned: always
shm:
  description: C(/dev/shm) in bytes (C(size), C(used), C(avail)); C(error) instead when it could not be read.
  type: dict
  returned: always
"""

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.compat.version import LooseVersion

_BINS = ("ray", "vllm", "python")
_READ_RAY = "import importlib.metadata as m; print(m.version('ray'))"


def venv_state(module, venv):
    """(missing bins, Ray's version or '')."""
    missing = [b for b in _BINS if not os.access(os.path.join(venv, "bin", b), os.X_OK)]
    if "python" in missing:
        return missing, ""
    rc, out, _err = module.run_command([os.path.join(venv, "bin", "python"), "-c", _READ_RAY])
    return missing, out.strip() if rc == 0 else ""


def shm_usage(path="/dev/shm"):
    """What df --block-size=1 --output=size,used,avail shows, from statvfs."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"error": "%s: %s" % (path, exc.strerror)}
    return {
        "size": st.f_blocks * st.f_frsize,
        "used": (st.f_blocks - st.f_bfree) * st.f_frsize,
        "avail": st.f_bavail * st.f_frsize,
    }


def ensure_dir(module, path, check):
    """True when the directory was (or would be) created or its mode or owner fixed."""
    if not os.path.isdir(path):
        if not check:
            os.makedirs(path, 0o755)
            os.chmod(path, 0o755)
            os.chown(path, 0, 0)
        return True
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) == 0o755 and (st.st_uid, st.st_gid) == (0, 0):
        return False
    if not check:
        os.chmod(path, 0o755)
        os.chown(path, 0, 0)
    return True


def token_current(path, token):
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            content = f.read()
    except OSError:
        return False
    return content == token.encode() and stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (0, 0)


def write_token(path, token):
    """Atomically: a 0600 temporary file beside it, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=".ray-auth-token.", dir=os.path.dirname(path))
    try:
        try:
            os.fchmod(fd, 0o600)
            os.fchown(fd, 0, 0)
            os.write(fd, token.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)  # no half-written token left beside it
        raise


def main():
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", required=True),
            venv=dict(type="path"),
            token=dict(type="str", no_log=True),
            token_path=dict(type="path", no_log=False),
            token_min_ray_version=dict(type="str", no_log=False),
        ),
        required_together=[("token", "token_path")],
        supports_check_mode=True,
    )
    p = module.params
    check = module.check_mode
    created = []
    if ensure_dir(module, p["config_dir"], check):
        created.append(p["config_dir"])

    missing, version = venv_state(module, p["venv"]) if p["venv"] else ([], "")

    token_written = False
    if p["token_path"]:
        need = p["token_min_ray_version"]
        too_old = bool(p["venv"] and need) and (not version or LooseVersion(version) < LooseVersion(need))
        if not too_old:
            token_written = True
            if not token_current(p["token_path"], p["token"]):
                created.append(p["token_path"])
                if not check:
                    parent = os.path.dirname(p["token_path"])
                    if not os.path.isdir(parent):
                        module.fail_json(msg="token_path %s: its directory does not exist" % p["token_path"])
                    write_token(p["token_path"], p["token"])

    result = dict(
        changed=bool(created),
        created=created,
        venv_missing=missing,
        ray_version=version,
        token_written=token_written,
        shm=shm_usage(),
    )
    if module._diff and created:
        result["diff"] = dict(before="", after="".join("written: %s\n" % c for c in created))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
