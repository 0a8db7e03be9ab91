# -*- coding: utf-8 -*-
# Copyright: mseg.fleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of mseg.fleet.nft_apply: commit-confirmed orchestration.

Without ``confirm_timeout`` the module runs as usual. With it:

1. ``arm``: the module validates and, if something must change, leaves a detached worker on the
   host that holds the apply lock and waits for a start signal (nothing is applied yet);
2. the controller touches the start file and drops its connection (``reset``), because the new
   ruleset may cut exactly that connection;
3. the worker applies; the controller reconnects over a fresh connection (retrying while the
   host is unreachable) and calls ``confirm``; the host keeps the new ruleset only if that call
   arrives within ``confirm_timeout``, otherwise it restores the previous table by itself and the
   task fails saying so.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import secrets
import shlex
import time

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.mseg.fleet.plugins.module_utils.apply.persist import restore_templates
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.plugin_utils.action import documented_options

display = Display()

MODULE = "mseg.fleet.nft_apply"
_PASSED_TO_CONFIRM = ("state", "state_dir", "unit_dir")


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    # what a task may set: the module's documented options, less the internal ones this plugin sets itself
    _VALID_ARGS = frozenset(name for name in documented_options("nft_apply") if not name.startswith("_"))

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        # the boot restore script and its unit are files of the collection, and AnsiballZ carries only Python
        try:
            args["_templates"] = restore_templates()
        except MsegError as exc:
            raise AnsibleActionFail(str(exc))
        timeout = args.get("confirm_timeout")
        if self._task.async_val:
            raise AnsibleActionFail("nft_apply does not run under async: commit-confirmed (confirm_timeout) "
                                    "already keeps the apply safe from connection loss")
        if not timeout or self._play_context.check_mode:
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            return result

        token = secrets.token_hex(16)
        armed = self._execute_module(module_name=MODULE, module_args=dict(args, _phase="arm", _txn=token),
                                     task_vars=task_vars)
        if armed.get("failed") or not armed.get("armed"):
            armed.pop("armed", None)
            result.update(armed)
            return result

        started = self._low_level_execute_command("touch %s" % shlex.quote(armed["go"]), sudoable=True)
        if started.get("rc") != 0:
            raise AnsibleActionFail("could not start the armed apply (%s); the host removes it by itself "
                                    "and keeps its ruleset" % (started.get("stderr") or started.get("stdout")))
        return self._confirm(result, args, token, int(timeout), task_vars)

    def _reset(self):
        try:
            self._connection.reset()
        except (AttributeError, NotImplementedError, AnsibleConnectionFailure):
            pass

    def _confirm(self, result, args, token, timeout, task_vars):
        confirm_args = dict((k, args[k]) for k in _PASSED_TO_CONFIRM if k in args)
        confirm_args.update(_phase="confirm", _txn=token)
        conn_timeout = int(getattr(self._play_context, "timeout", 10) or 10)
        give_up = time.monotonic() + timeout + 4 * conn_timeout + 150
        last_error = None
        self._reset()
        while True:
            try:
                answer = self._execute_module(module_name=MODULE, module_args=confirm_args, task_vars=task_vars)
            except AnsibleConnectionFailure as exc:
                last_error = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                display.vvv("nft_apply: reconnect failed: %s" % last_error, host=self._play_context.remote_addr)
                if time.monotonic() > give_up:
                    raise AnsibleActionFail(
                        "could not reconnect to confirm the apply (%s); the host rolls back by itself "
                        "%ss after the apply" % (last_error, timeout))
                time.sleep(1)
                self._reset()
                continue
            if answer.get("pending") and time.monotonic() < give_up:
                display.vvv("nft_apply: %s" % answer.get("msg"), host=self._play_context.remote_addr)
                if answer.get("stale"):
                    time.sleep(0.5)
                    self._reset()
                continue
            break
        answer.pop("pending", None)
        answer.pop("stale", None)
        if answer.get("rolled_back") and last_error:
            answer["msg"] = "%s (the controller could not reconnect: %s)" % (answer.get("msg"), last_error)
        if answer.get("rolled_back"):
            answer["msg"] = "rolled back: %s" % answer.get("msg")
            answer["failed"] = True
        if "diff" in answer and not self._task.diff:
            del answer["diff"]
        result.update(answer)
        return result
