#!/usr/bin/python
# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: service_unit
short_description: Converge a systemd unit and its environment file in one call, restarting it only when needed
version_added: "0.2.0"
description:
  - Writes the unit file and the environment file of one systemd service when their content, mode
    or owner differ, reloads systemd when the unit file changed, enables the unit, and then starts
    it (not running), restarts it (a file changed now, a file changed after it last started, or
    O(restart)), or leaves it alone.
  - One round trip where a template per file, a drift probe, a handler and a start task took
    five; the process state and the files are read and written in the same call, so a unit is
    written and started once on a first run, never started, changed and restarted.
  - A file that changed after the running process started (a run stopped between writing a file
    and restarting) restarts it too; the rule is C(drift_reason) in C(plugins/module_utils/_units.py).
  - Supports check mode (reports what it would write and do) and diff mode (the unit file; the
    environment file, which may hold secrets, only as a size).
options:
  name:
    description: The unit name without C(.service).
    type: str
    required: true
  unit:
    description: Content of C(/etc/systemd/system/NAME.service).
    type: str
    required: true
  env:
    description:
      - Content of the unit's second file, mode 0600. That is its environment file, or another file it
        reads (alias O(config), for example a ruleset the unit loads). May hold secrets; never logged or diffed.
    type: str
    required: true
    aliases: [config]
  env_path:
    description: Where that file goes.
    type: path
    required: true
    aliases: [config_path]
  validate:
    description:
      - A command run on the new environment file before it replaces the old one, C(%s) standing for
        a temporary copy (for example C(nft -c -f %s) for a ruleset the unit loads). When it fails,
        nothing is written or restarted and the call fails with its output. Run only when the
        content differs from the file on the node.
    type: str
  verify:
    description:
      - A command (a read) run after the unit is in place, whose result the call returns as
        RV(verify), for example C(nft list table inet multinode_vllm) for a oneshot unit whose effect
        can be undone behind its back (a flushed ruleset) while systemd still says active.
      - When it fails on a unit this call left running, the unit is restarted once (the reason is
        in RV(reasons)) and the command runs again; RV(verify) is the second answer. Not run in
        check mode.
    type: str
  requires:
    description:
      - A command (a read) that must succeed before anything is written or started, for example
        C(nft list tables) for a unit that loads a ruleset (the tool is installed and may change it).
      - When it fails (or its program is missing), the call changes nothing and returns
        RV(requirement) with C(met=false), without failing, so that the caller can install what is
        missing and call again. Runs in check mode too.
    type: str
  restart:
    description: Restart the unit even when nothing changed (a member it depends on restarted).
    type: bool
    default: false
  restart_reason:
    description: Why O(restart) is set, for the result's C(reasons).
    type: str
    default: asked to restart
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Run the Ray head unit
  multinode.vllm.service_unit:
    name: ray-head
    unit: "{{ lookup('ansible.builtin.template', 'ray-head.service.j2') }}"
    env: "{{ lookup('ansible.builtin.template', 'ray.env.j2') }}"
    env_path: /etc/multinode-vllm/ray-head.env
  register: ray_head_service
"""

RETURN = r"""
action:
  description: What happened to the process, C(started), C(restarted) or C(none).
  type: str
  returned: always
restarted:
  description: A new process runs since this call (C(started) or C(restarted)).
  type: bool
  returned: always
reasons:
  description: Why it was started or restarted.
  type: list
  elements: str
  returned: always
files_changed:
  description: The files written (or that would be in check mode).
  type: list
  elements: str
  returned: always
verify:
  description: The O(verify) command's C(rc), C(stdout) and C(stderr) (the last run).
  type: dict
  returned: when O(verify) is given and not in check mode
requirement:
  description:
    - The O(requires) command's C(met) (it succeeded), C(rc), C(stdout) and C(stderr); when not met,
      nothing else was done.
  type: dict
  returned: when O(requires) is given
"""

import os
import shlex
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multinode.vllm.plugins.module_utils._units import (
    drift_reason,
    file_mtimes,
    parse_systemctl_show,
    systemctl_show_argv,
    systemd_state,
    unit_path,
)


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (IOError, OSError):
        return None


def systemctl(module, *args):
    rc, out, err = module.run_command(["systemctl", *args], check_rc=False)
    return rc, out, err


def unit_state(module, name):
    rc, out, err = module.run_command(systemctl_show_argv([name]), check_rc=False)
    if rc != 0:
        module.fail_json(msg="systemctl show %s failed (rc=%s): %s" % (name, rc, err.strip()))
    blocks = parse_systemctl_show(out)
    return systemd_state(blocks[0] if blocks else {})


def with_newline(content):
    """The file's text as written: CONTENT ending in one newline."""
    return content if content.endswith("\n") else content + "\n"


def write(module, path, content, mode):
    """Write content atomically with root:root and mode; True when the file changed."""
    data = with_newline(content)
    data = data.encode("utf-8")
    changed = read(path) != data
    if changed and not module.check_mode:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)
        module.atomic_move(tmp, path)
    if os.path.exists(path):
        st = os.stat(path)
        if (st.st_mode & 0o7777) != mode or st.st_uid != 0 or st.st_gid != 0:
            changed = True
            if not module.check_mode:
                os.chown(path, 0, 0)
                os.chmod(path, mode)
    return changed


def validate(module, command, path, content):
    """Run COMMAND (%s: a temporary copy of CONTENT beside PATH); fail the call when it fails."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        directory = None
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s.check." % os.path.basename(path))
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, with_newline(content).encode("utf-8"))
        os.close(fd)
        argv = [tmp if arg == "%s" else arg.replace("%s", tmp) for arg in shlex.split(command)]
        rc, out, err = module.run_command(argv, check_rc=False)
    finally:
        os.unlink(tmp)
    if rc != 0:
        module.fail_json(
            msg="%s refused the new %s (rc=%s), nothing changed: %s"
            % (command, path, rc, ((err or "") + (out or "")).strip().replace(tmp, path)),
            action="none",
            restarted=False,
            reasons=[],
            files_changed=[],
        )


def run_verify(module, command):
    rc, out, err = module.run_command(shlex.split(command), check_rc=False)
    return dict(rc=rc, stdout=out, stderr=err)


def run_requirement(module, command):
    """The O(requires) command's answer; a missing program is an unmet requirement, not a crash."""
    try:
        rc, out, err = module.run_command(shlex.split(command), check_rc=False, handle_exceptions=False)
    except OSError as exc:
        rc, out, err = 127, "", str(exc)
    return dict(met=rc == 0, rc=rc, stdout=out, stderr=err)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            unit=dict(type="str", required=True),
            env=dict(type="str", required=True, no_log=True, aliases=["config"]),
            env_path=dict(type="path", required=True, aliases=["config_path"]),
            validate=dict(type="str"),
            verify=dict(type="str"),
            requires=dict(type="str"),
            restart=dict(type="bool", default=False),
            restart_reason=dict(type="str", default="asked to restart"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    name = p["name"]
    requirement = run_requirement(module, p["requires"]) if p["requires"] else None
    if requirement is not None and not requirement["met"]:
        module.exit_json(
            changed=False, action="none", restarted=False, reasons=[], files_changed=[], requirement=requirement
        )
    unit_file = unit_path(name)
    before = unit_state(module, name)
    # Drift is judged on the files as they were before this call (a file written now restarts anyway).
    drift = drift_reason(name, before, file_mtimes([unit_file, p["env_path"]]))

    old_unit = read(unit_file)
    old_env = read(p["env_path"])
    if p["validate"] and old_env != with_newline(p["env"]).encode("utf-8"):
        validate(module, p["validate"], p["env_path"], p["env"])
    unit_changed = write(module, unit_file, p["unit"], 0o644)
    env_changed = write(module, p["env_path"], p["env"], 0o600)
    files_changed = [f for f, c in ((unit_file, unit_changed), (p["env_path"], env_changed)) if c]

    changed = bool(files_changed)
    if (unit_changed or before["need_daemon_reload"]) and not module.check_mode:
        rc, _out, err = systemctl(module, "daemon-reload")
        if rc != 0:
            module.fail_json(msg="systemctl daemon-reload failed: %s" % err.strip())

    rc, out, _err = systemctl(module, "is-enabled", "%s.service" % name)
    if out.strip() != "enabled":
        changed = True
        if not module.check_mode:
            rc, _out, err = systemctl(module, "enable", "%s.service" % name)
            if rc != 0:
                module.fail_json(msg="systemctl enable %s failed: %s" % (name, err.strip()))

    reasons = []
    if not before["active"]:
        action = "started"
        reasons.append("%s was %s" % (name, before["state"]))
    else:
        if files_changed:
            reasons.append("%s changed" % ", ".join(files_changed))
        if drift:
            reasons.append(drift + " (a run interrupted before its restart?)")
        if p["restart"]:
            reasons.append(p["restart_reason"])
        action = "restarted" if reasons else "none"
    if action != "none":
        changed = True
        if not module.check_mode:
            verb = "start" if action == "started" else "restart"
            rc, _out, err = systemctl(module, verb, "%s.service" % name)
            if rc != 0:
                module.fail_json(
                    msg="systemctl %s %s failed: %s; look at `journalctl -u %s`" % (verb, name, err.strip(), name),
                    action=action,
                    reasons=reasons,
                    files_changed=files_changed,
                )

    verified = None
    if p["verify"] and not module.check_mode:
        verified = run_verify(module, p["verify"])
        if verified["rc"] != 0 and action == "none":
            reasons.append("%s failed on the running unit: %s" % (p["verify"], verified["stderr"].strip()[:200]))
            action, changed = "restarted", True
            rc, _out, err = systemctl(module, "restart", "%s.service" % name)
            if rc != 0:
                module.fail_json(
                    msg="systemctl restart %s failed: %s; look at `journalctl -u %s`" % (name, err.strip(), name),
                    action=action,
                    reasons=reasons,
                    files_changed=files_changed,
                )
            verified = run_verify(module, p["verify"])

    result = dict(
        changed=changed,
        action=action,
        restarted=action != "none",
        reasons=reasons,
        files_changed=files_changed,
    )
    if module._diff:
        env_new = with_newline(p["env"])
        result["diff"] = [
            dict(
                before_header=unit_file,
                after_header=unit_file,
                before=(old_unit or b"").decode("utf-8", "replace"),
                after=with_newline(p["unit"]),
            ),
            dict(
                before_header=p["env_path"],
                after_header=p["env_path"],
                before="(%d bytes, mode 0600: not shown)\n" % len(old_env or b""),
                after="(%d bytes, mode 0600: not shown)\n" % len(env_new.encode("utf-8")),
            ),
        ]
    if verified is not None:
        result["verify"] = verified
    if requirement is not None:
        result["requirement"] = requirement
    module.exit_json(**result)


if __name__ == "__main__":
    main()
