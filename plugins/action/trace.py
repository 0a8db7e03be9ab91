# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trace flows through the compiled policy on the controller; see plugins/modules/trace.py."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible_collections.mseg.fleet.plugins.action.compile import compile_from_task
from ansible_collections.mseg.fleet.plugins.module_utils.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.trace import format_matrix, format_table, trace

ARGUMENT_SPEC = {
    "src": {"type": "str", "required": True},
    "dst": {"type": "str", "required": True},
    "port": {"type": "str", "required": True},
    "policy": {"type": "raw"},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        validation = ArgumentSpecValidator(ARGUMENT_SPEC).validate(self._task.args)
        if validation.error_messages:
            raise AnsibleActionFail("mseg.fleet.trace: %s" % "; ".join(validation.error_messages))
        args = validation.validated_parameters
        policy = args["policy"] if args["policy"] is not None else task_vars.get("mseg_policy")
        try:
            fleet = compile_from_task(self, task_vars, self._templar.template(policy))
            results = trace(fleet, args["src"], args["dst"], args["port"])
        except MsegError as exc:
            result.update(failed=True, msg="mseg.fleet.trace: %s" % exc, problems=exc.messages)
            return result
        data = [item.to_data() for item in results]
        result.update(
            changed=False,
            policy_digest=fleet.policy.digest,
            results=data,
            lines=format_table(results, fleet),
            matrix=format_matrix(results, args["port"]),
            allowed=sum(1 for item in data if item["allowed"]),
            denied=sum(1 for item in data if not item["allowed"]),
        )
        return result
