"""The scope check (plugins/module_utils/nft/scope.py): content may touch table inet mseg and nothing else."""

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft import scope
from ansible_collections.mseg.fleet.tests.unit.nft.samples import RULESET


def test_scope_accepts_the_rendered_contract():
    scope.check_scope(RULESET)
    scope.check_scope("add table inet mseg\nadd element inet mseg s { 1.2.3.4 }\nflush table inet mseg\n"
                      "table inet mseg { chain c { } }; add rule inet mseg c accept\n"
                      "add ct helper inet mseg h { type \"ftp\" protocol tcp; }")


@pytest.mark.parametrize("statement,shown", [
    ("flush ruleset", "flush ruleset"),
    ("delete table ip nat", "delete table ip nat"),
    ("table ip filter {\n}", "table ip filter"),
    ("table mseg {\n}", "table mseg"),
    ("add rule inet firewalld filter_INPUT accept", "add rule inet firewalld filter_INPUT accept"),
    ("add element ip filter s { 1.2.3.4 }", "add element ip filter s"),
    ('include "/etc/nftables.conf"', 'include "/etc/nftables.conf"'),
    ("list ruleset", "list ruleset"),
])
def test_scope_refuses_anything_else_with_its_line(statement, shown):
    with pytest.raises(MsegError) as err:
        scope.check_scope(RULESET + statement + "\n")
    assert "line 19: '%s'" % shown in str(err.value)
    assert "touches more than table inet mseg" in str(err.value)


@pytest.mark.parametrize("content,message", [
    (RULESET + "}\n", "line 19: unbalanced '}'"),
    ("table inet mseg {\n chain c {\n", "the block opened on line 1 is never closed"),
    ("delete table inet mseg\n", "does not define 'table inet mseg"),
])
def test_scope_reports_broken_structure(content, message):
    with pytest.raises(MsegError) as err:
        scope.check_scope(content)
    assert message in str(err.value)
