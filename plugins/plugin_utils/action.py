# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the controller-side actions (compile, trace, observe_report) share: their options, read from the
documentation of the module of the same name (the one place they are written), the fleet compile from the
inventory, the failure report and the files they write."""

from __future__ import annotations

import importlib
import os
import stat

import yaml
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.errors import UnsupportedError
from ansible.plugins.action import ActionBase
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import read_text, write_if_changed
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet
from ansible_collections.mseg.fleet.plugins.plugin_utils.inventory import gather_fleet, gather_system

_COLLECTION = "ansible_collections.mseg.fleet.plugins"
_FRAGMENT_PREFIX = "mseg.fleet."
# What ArgumentSpecValidator reads from an option; the rest of its documentation (description ...) is for people.
_SPEC_KEYS = ("type", "elements", "required", "default", "choices", "aliases", "no_log", "options")


def documented_options(module):
    """The options the module ``module`` of this collection documents, with those of its doc fragments from this
    collection merged in as ansible-doc merges them (the module's own documentation wins)."""
    doc = yaml.safe_load(importlib.import_module("%s.modules.%s" % (_COLLECTION, module)).DOCUMENTATION)
    options = dict(doc.get("options") or {})
    for slug in doc.get("extends_documentation_fragment") or []:
        if not slug.startswith(_FRAGMENT_PREFIX):
            continue
        name, _dot, var = slug[len(_FRAGMENT_PREFIX):].partition(".")
        fragment = importlib.import_module("%s.doc_fragments.%s" % (_COLLECTION, name)).ModuleDocFragment
        for option, spec in (yaml.safe_load(getattr(fragment, (var or "documentation").upper())).get("options")
                             or {}).items():
            options.setdefault(option, spec)
    return options


def argument_spec(options):
    """The argument spec (for ArgumentSpecValidator) of documented ``options``."""
    spec = {}
    for name, doc in options.items():
        spec[name] = {key: doc[key] for key in _SPEC_KEYS if key in doc and key != "options"}
        if "options" in doc:
            spec[name]["options"] = argument_spec(doc["options"])
    return spec


def private_directory(directory):
    """Create ``directory`` (0700, parents as needed) or check the one that exists: None when only this user can
    change what is in it, else the problem in one sentence. Rulesets, plans and reports written into a directory
    someone else controls can be replaced before anyone reads or applies them: in a shared directory such as /tmp
    another user can create the directory first, or make it a symbolic link to theirs."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    found = os.lstat(directory)
    if not stat.S_ISDIR(found.st_mode):
        return "%s is not a directory (a symbolic link or a file)" % directory
    if found.st_uid != os.geteuid():
        return ("%s belongs to uid %d, not to this user (uid %d): in a shared directory another user can create it "
                "first" % (directory, found.st_uid, os.geteuid()))
    if found.st_mode & 0o022:
        return "%s is writable by others (mode %04o); chmod 0700 it" % (directory, stat.S_IMODE(found.st_mode))
    ancestor = os.path.dirname(directory)
    while True:
        mode = os.stat(ancestor).st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            return ("%s is writable by everyone without the sticky bit: anyone can replace %s" % (ancestor, directory))
        if ancestor == os.path.dirname(ancestor):
            return None
        ancestor = os.path.dirname(ancestor)


class FleetAction(ActionBase):
    """Base of the actions that compile the fleet on the controller and never touch a host.

    A subclass names its module (``NAME``, whose documentation declares the options; ``ARGUMENT_SPEC`` is derived
    from it when the class is defined) and implements ``act``; ``run`` validates the arguments, compiles the fleet
    with the policy of option ``policy`` and reports every problem of the policy, the inventory or ``act`` as one
    failure that starts with ``INVALID`` (default ``mseg.fleet.<NAME>:``).
    """

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    NAME = ""
    INVALID = None
    ARGUMENT_SPEC = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.ARGUMENT_SPEC = argument_spec(documented_options(cls.NAME))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validated_args()
        try:
            fleet = self.compile_fleet(task_vars, args["policy"])
            result.update(self.act(fleet, args))
        except MsegError as exc:
            message = self.INVALID or "mseg.fleet.%s:" % self.NAME
            result.update(failed=True, msg="%s\n%s" % (message, exc), problems=exc.messages)
        return result

    def act(self, fleet, args):
        """The work on the compiled ``fleet``; returns what to add to the result, raises MsegError."""
        raise NotImplementedError

    def validated_args(self):
        validation = ArgumentSpecValidator(self.ARGUMENT_SPEC).validate(self._task.args)
        if validation.error_messages:
            # the validator names an unknown option without saying it is unknown
            problems = ["unknown option(s) %s" % error.msg if isinstance(error, UnsupportedError) else error.msg
                        for error in validation.errors.errors]
            raise AnsibleActionFail("mseg.fleet.%s: %s" % (self.NAME, "; ".join(problems)))
        return validation.validated_parameters

    def compile_fleet(self, task_vars, policy=None):
        """Gather the inventory, the roles' system flows among it, and compile it (the policy defaults to
        mseg_policy); raise MsegError with every problem found in the inventory and the policy together."""
        if policy is None:
            policy = task_vars.get("mseg_policy")
        fleet, problems = gather_fleet(task_vars, self._templar)
        try:
            result = compile_fleet(self._templar.template(policy), fleet, gather_system(task_vars, self._templar))
        except MsegError as exc:
            raise MsegError(problems + exc.messages)
        if problems:
            raise MsegError(problems)
        return result

    def write_files(self, directory, texts, option, fix="choose a writable directory"):
        """Write ``texts`` (file name -> text) into ``directory`` (created 0700), each file atomically, 0600, and
        only when its content changes; in check mode only tell whether one would change. Returns (changed, paths
        written or kept); a directory that cannot be written, or that someone else could change
        (``private_directory``), fails the task naming ``option`` and ``fix``."""
        paths = [(os.path.join(directory, name), texts[name]) for name in sorted(texts)]
        if self._task.check_mode:
            return any(read_text(path) != text for path, text in paths), []
        changed = False
        try:
            problem = private_directory(directory)
            if problem:
                raise AnsibleActionFail("mseg.fleet.%s: refusing %s %s: %s; %s (e.g. a directory under your home)"
                                        % (self.NAME, option, directory, problem, fix))
            for path, text in paths:
                changed = write_if_changed(path, text) or changed
        except (IOError, OSError) as exc:
            raise AnsibleActionFail("mseg.fleet.%s: cannot write to %s %s: %s; %s"
                                    % (self.NAME, option, directory, exc.strerror or exc, fix))
        return changed, [path for path, _text in paths]
