"""Every action plugin accepts exactly the options its module documents.

Sanity's validate-modules compares a module's argument spec with its documentation, but it cannot see the options
an action plugin accepts (``ARGUMENT_SPEC`` of a FleetAction, ``_VALID_ARGS`` of the others): this test does.
"""

import copy
import importlib
import os

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.mseg.fleet.plugins.plugin_utils.action import FleetAction, argument_spec, documented_options

ACTION_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "plugins", "action")
ACTIONS = sorted(name[:-3] for name in os.listdir(ACTION_DIR) if name.endswith(".py"))
# Set by plugins/action/nft_apply.py on the module calls of commit-confirmed, never by a task.
NFT_APPLY_INTERNAL = frozenset(("_phase", "_txn", "_templates"))


def action_class(name):
    return importlib.import_module("ansible_collections.mseg.fleet.plugins.action.%s" % name).ActionModule


def spec_divergence(accepted, documented, where=""):
    """Every option and field on which two argument specs differ, as sentences (empty when they agree)."""
    found = []
    for option in sorted(set(accepted) | set(documented)):
        if option not in documented:
            found.append("%s%s is accepted but not documented" % (where, option))
        elif option not in accepted:
            found.append("%s%s is documented but not accepted" % (where, option))
        else:
            mine, theirs = accepted[option], documented[option]
            for field in sorted((set(mine) | set(theirs)) - {"options"}):
                if mine.get(field) != theirs.get(field):
                    found.append("%s%s.%s: accepted %r, documented %r"
                                 % (where, option, field, mine.get(field), theirs.get(field)))
            found.extend(spec_divergence(mine.get("options") or {}, theirs.get("options") or {},
                                         "%s%s." % (where, option)))
    return found


def names_divergence(accepted, documented, internal=frozenset()):
    """How the option names an action accepts from a task differ from the documented public ones plus the
    ``internal`` ones the action itself passes to its module (which a task must not set)."""
    public = set(o for o in documented if not o.startswith("_"))
    found = ["%s is accepted but not documented" % o for o in sorted(set(accepted) - public - internal)]
    found += ["%s is documented but not accepted" % o for o in sorted(public - set(accepted))]
    found += ["%s is internal (set by the action plugin) but a task may set it" % o
              for o in sorted(set(accepted) & internal)]
    found += ["%s is documented with a leading _ but is not one the action sets" % o
              for o in sorted(o for o in documented if o.startswith("_") and o not in internal)]
    return found


@pytest.mark.parametrize("name", ACTIONS)
def test_an_action_accepts_exactly_the_options_its_module_documents(name):
    action = action_class(name)
    documented = documented_options(name)
    if issubclass(action, FleetAction):
        assert spec_divergence(action.ARGUMENT_SPEC, argument_spec(documented)) == []
    else:
        assert action._VALID_ARGS, "plugins/action/%s.py declares neither ARGUMENT_SPEC nor _VALID_ARGS" % name
        internal = NFT_APPLY_INTERNAL if name == "nft_apply" else frozenset()
        assert names_divergence(action._VALID_ARGS, documented, internal) == []


def test_the_spec_check_sees_an_option_or_a_field_that_diverges():
    documented = argument_spec(documented_options("compile"))
    extra = dict(documented, hostz={"type": "str"})
    missing = {k: v for k, v in documented.items() if k != "tags"}
    default = copy.deepcopy(documented)
    default["return_rulesets"]["default"] = True
    nested = dict(documented, limits={"type": "dict", "options": {"max": {"type": "int"}}})
    nested_doc = dict(documented, limits={"type": "dict", "options": {"max": {"type": "str"}}})
    assert spec_divergence(extra, documented) == ["hostz is accepted but not documented"]
    assert spec_divergence(missing, documented) == ["tags is documented but not accepted"]
    assert spec_divergence(default, documented) == ["return_rulesets.default: accepted True, documented False"]
    assert spec_divergence(nested, nested_doc) == ["limits.max.type: accepted 'int', documented 'str'"]


def test_the_names_check_sees_a_missing_an_extra_or_an_exposed_internal_option():
    documented = documented_options("nft_apply")
    valid = set(action_class("nft_apply")._VALID_ARGS)
    assert names_divergence(valid - {"lock_timeout"}, documented, NFT_APPLY_INTERNAL) == [
        "lock_timeout is documented but not accepted"]
    assert names_divergence(valid | {"timeout"}, documented, NFT_APPLY_INTERNAL) == [
        "timeout is accepted but not documented"]
    assert names_divergence(valid | {"_txn"}, documented, NFT_APPLY_INTERNAL) == [
        "_txn is internal (set by the action plugin) but a task may set it"]
    assert names_divergence(valid, dict(documented, _secret={}), NFT_APPLY_INTERNAL) == [
        "_secret is documented with a leading _ but is not one the action sets"]


def test_the_controller_side_options_include_the_policy_of_their_doc_fragment():
    for name in ("compile", "trace", "observe_report"):
        assert action_class(name).ARGUMENT_SPEC["policy"] == {"type": "raw"}


class _Task:
    def __init__(self, args):
        self.args = args


@pytest.mark.parametrize("args, message", [
    ({"src": "web-01", "dst": "db-01", "port": "tcp/5432", "prot": "tcp"},
     "mseg.fleet.trace: unknown option(s) prot. Supported parameters include: dst, policy, port, src."),
    ({"dst": "db-01", "port": "tcp/5432"}, "mseg.fleet.trace: missing required arguments: src"),
])
def test_a_task_with_an_option_the_module_does_not_document_fails_with_its_name(args, message):
    action = object.__new__(action_class("trace"))
    action._task = _Task(args)
    with pytest.raises(AnsibleActionFail) as err:
        action.validated_args()
    assert str(err.value) == message


def test_observe_report_counts_the_log_kinds_of_the_contract():
    """The documented kinds (from which the action's spec is built) are the contract's log kinds."""
    from ansible_collections.mseg.fleet.plugins.module_utils.common import contract

    assert sorted(documented_options("observe_report")["kinds"]["choices"]) == sorted(contract.LOG_KINDS)
