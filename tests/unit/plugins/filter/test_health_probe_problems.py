"""The rollout's health probes are checked by Python with the one port parser, before any host changes."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.mseg.fleet.plugins.filter.health_probe_problems import health_probe_problems

INVENTORY = ["app-01", "db-01", "web-01", "web-02", "web-03", "web-04"]


def test_probes_that_can_run_have_no_problem():
    good = [{"dst": "db-01", "port": "tcp/5432"}, {"dst": "web-01", "port": "udp/53"}, {"dst": "app-01", "port": "icmp"}]
    assert health_probe_problems({"app-01": good, "db-01": [], "web-01": ()}, INVENTORY) == []


@pytest.mark.parametrize("probes,problem", [
    ([{"dst": "db-1", "port": "tcp/5432"}], "probe 1: dst db-1 is not a host of the inventory"),
    ([{"dst": "db-01", "port": "tcp/80800"}], "probe 1: port tcp/80800 is not tcp/<port>, udp/<port> or icmp"),
    ([{"dst": "db-01", "port": "tcp/0"}], "probe 1: port tcp/0 is not tcp/<port>, udp/<port> or icmp"),
    ([{"dst": "db-01", "port": "tcp/8000-8099"}], "probe 1: port tcp/8000-8099 is not tcp/<port>, udp/<port> or icmp"),
    ([{"dst": "db-01", "port": "tcp"}], "probe 1: port tcp is not tcp/<port>, udp/<port> or icmp"),
    ([{"dst": "db-01", "port": "icmp/8"}], "probe 1: port icmp/8 is not tcp/<port>, udp/<port> or icmp"),
    ([{"dst": "db-01", "port": 5432}], "probe 1: port 5432 is not tcp/<port>, udp/<port> or icmp"),
    ([{"dst": "db-01", "port": "sctp/9"}], "probe 1: port sctp/9 is not tcp/<port>, udp/<port> or icmp"),
    ([{"dst": "db-01", "port": "icmp"}, {"dst": "db-01"}], "probe 2 ({'dst': 'db-01'}) needs dst and port"),
    (["db-01"], "probe 1 (db-01) needs dst and port"),
    ("db-01 tcp/5432", "expected a list of probes, got db-01 tcp/5432"),
    ({"dst": "db-01", "port": "tcp/5432"}, "expected a list of probes, got {'dst': 'db-01', 'port': 'tcp/5432'}"),
])
def test_each_problem_is_named_with_its_host(probes, problem):
    assert health_probe_problems({"app-01": probes}, INVENTORY) == ["%s (app-01)" % problem]


def test_a_probe_with_two_problems_gets_both():
    assert health_probe_problems({"app-01": [{"dst": "db-1", "port": "tcp/70000"}]}, INVENTORY) == [
        "probe 1: dst db-1 is not a host of the inventory (app-01)",
        "probe 1: port tcp/70000 is not tcp/<port>, udp/<port> or icmp (app-01)"]


def test_hosts_with_the_same_problem_share_one_line_and_at_most_three_are_named():
    bad = [{"dst": "db-1", "port": "tcp/5432"}]
    by_host = {name: bad for name in ["web-01", "web-02", "web-03", "web-04", "app-01"]}
    by_host["db-01"] = [{"dst": "app-01", "port": "udp/99999"}]
    assert health_probe_problems(by_host, INVENTORY) == [
        "probe 1: dst db-1 is not a host of the inventory (web-01, web-02, web-03 and 2 more)",
        "probe 1: port udp/99999 is not tcp/<port>, udp/<port> or icmp (db-01)"]


def test_input_that_is_not_probes_by_host_is_refused():
    with pytest.raises(AnsibleFilterError) as err:
        health_probe_problems(["app-01"], INVENTORY)
    assert "expected each host's probes by hostname" in str(err.value)
