"""What the compile action returns: the size of a registered result must not grow with hosts x rules unless asked."""

import json
import os
from types import SimpleNamespace

from ansible_collections.mseg.fleet.plugins.action.compile import ActionModule
from ansible_collections.mseg.fleet.plugins.module_utils.common.contract import RENDERED_SUFFIX
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet

ARGS = {"hosts": None, "tags": {}, "render_dir": None, "return_rulesets": False, "return_summary": True,
        "other_modes": []}


def act(fleet, **args):
    instance = object.__new__(ActionModule)
    instance._task = SimpleNamespace(check_mode=False)
    instance._display = SimpleNamespace(warning=lambda message: None)
    return instance.act(fleet, dict(ARGS, **args))


def test_without_summary_the_result_does_not_grow_with_the_fleet(load_fleet, tmp_path):
    data = load_fleet()
    fleet = compile_fleet(data["policy"], data["hosts"])
    small = act(fleet, return_summary=False, render_dir=str(tmp_path / "small"))
    assert "summary" not in small and "rulesets" not in small
    assert small["render_dir"] == str(tmp_path / "small")
    for name in data["hosts"]:  # the files the policy role reads hold what return_rulesets would have returned
        with open(os.path.join(small["render_dir"], name + RENDERED_SUFFIX), encoding="utf-8") as handle:
            assert handle.read() == act(fleet, return_rulesets=True)["rulesets"][name]
    many = dict(data["hosts"], **{"%s-copy" % name: dict(host, addresses=["10.9.%d.1" % index])
                                  for index, (name, host) in enumerate(sorted(data["hosts"].items()))})
    bigger = act(compile_fleet(data["policy"], many), return_summary=False)
    assert bigger["hosts"] == 2 * small["hosts"]
    assert len(json.dumps(bigger["warnings_list"])) <= len(json.dumps(small["warnings_list"]))
    assert set(bigger) == set(small) - {"render_dir"}


def test_the_summary_carries_no_ruleset(load_fleet):
    data = load_fleet()
    result = act(compile_fleet(data["policy"], data["hosts"]))
    assert sorted(result["summary"]) == sorted(data["hosts"])
    assert "rulesets" not in result
    assert "table inet mseg" not in json.dumps(result)
