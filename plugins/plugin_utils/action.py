# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the controller-side actions (compile, trace, observe_report) share: argument checking and the fleet
compile from the inventory."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import write_atomic
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet
from ansible_collections.mseg.fleet.plugins.plugin_utils.inventory import gather_fleet


def write_if_changed(path, text):
    """Write atomically (0600); return True if the content changed."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except (IOError, OSError):
        pass
    write_atomic(path, text)
    return True


class FleetAction(ActionBase):
    """Base of the actions that compile the fleet on the controller and never touch a host."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    NAME = ""
    ARGUMENT_SPEC = {}

    def validated_args(self):
        validation = ArgumentSpecValidator(self.ARGUMENT_SPEC).validate(self._task.args)
        if validation.error_messages:
            raise AnsibleActionFail("mseg.fleet.%s: %s" % (self.NAME, "; ".join(validation.error_messages)))
        return validation.validated_parameters

    def compile_fleet(self, task_vars, policy=None):
        """Gather the inventory and compile it (the policy defaults to mseg_policy); raise MsegError with every
        problem found in the inventory and the policy together."""
        if policy is None:
            policy = task_vars.get("mseg_policy")
        fleet, problems = gather_fleet(task_vars, self._templar)
        try:
            result = compile_fleet(self._templar.template(policy), fleet)
        except MsegError as exc:
            raise MsegError(problems + exc.messages)
        if problems:
            raise MsegError(problems)
        return result

    @staticmethod
    def failed(result, message, exc):
        result.update(failed=True, msg="%s\n%s" % (message, exc) if message else str(exc), problems=exc.messages)
        return result
