"""Trace: verdicts, where they are decided, and clear errors for bad arguments."""

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet
from ansible_collections.mseg.fleet.plugins.module_utils.compile.trace import format_matrix, trace


@pytest.fixture(name="fleet", scope="module")
def fixture_fleet(load_fleet):
    data = load_fleet()
    return compile_fleet(data["policy"], data["hosts"])


def one(fleet, src, dst, port):
    results = trace(fleet, src, dst, port)
    return [(r.family, r.allowed, r.decided_at, r.to_data()["decided_by"]) for r in results]


@pytest.mark.parametrize("src,dst,port,expected", [
    ("app-01", "db-01", "tcp/5432", [(4, True, "ingress of db-01", "rule 20 (app-to-db)")]),
    ("web-01", "db-01", "tcp/5432", [(4, False, "ingress of db-01", "default")]),
    ("web-01", "app-01", "tcp/8005", [(4, True, "ingress of app-01", "rule 10 (web-to-app)"),
                                      (6, True, "ingress of app-01", "rule 10 (web-to-app)")]),
    ("web-01", "app-01", "tcp/8011", [(4, False, "ingress of app-01", "default"),
                                      (6, False, "ingress of app-01", "default")]),
    # web-02 observes (its egress only audits deny 30); app-01 enforces and drops by the same rule
    ("web-02", "app-01", "tcp/8080", [(4, False, "ingress of app-01", "rule 30 (no-stage-to-prod)")]),
    # web-02 observes: nothing drops, the default deny it would enforce is where the pair is decided
    ("app-01", "web-02", "tcp/22", [(4, True, "ingress of web-02", "default")]),
    ("192.0.2.9", "web-01", "icmp", [(4, True, "ingress of web-01", "rule 50 (office-to-web)")]),
    ("10.255.0.7", "db-01", "tcp/22", [(4, True, "ingress of db-01", "management")]),
    ("192.0.2.9", "legacy-01", "tcp/9999", [(4, True, "ingress of legacy-01", "bypass")]),
])
def test_verdicts(fleet, src, dst, port, expected):
    assert one(fleet, src, dst, port) == expected


def test_observe_sender_is_where_enforce_would_drop(fleet):
    result = trace(fleet, "web-02", "db-01", "tcp/5432")[0]
    assert result.egress.audited and result.egress.accepted
    assert result.decided_at == "ingress of db-01"  # where the packet is really dropped
    assert not result.allowed
    assert result.ingress.rule_id == 30 and not result.ingress.accepted
    assert result.ingress.logged == (40,)


def test_tag_and_group_expressions(fleet):
    pairs = {(r.src.label, r.dst.label) for r in trace(fleet, "role=web,env=prod", "db", "tcp/5432")}
    assert pairs == {("web-01", "db-01"), ("web-01", "legacy-01")}


def test_bad_arguments_are_all_reported(fleet):
    with pytest.raises(MsegError) as raised:
        trace(fleet, "role=nobody", "ghost-01", "tcp/1-9")
    assert raised.value.messages == [
        "mseg_trace_port: 'tcp/1-9' must name one port, e.g. tcp/5432 or udp/53 (or icmp, or an IP protocol such as "
        "vrrp)",
        "mseg_trace_src: no host carries the tags role=nobody",
        "mseg_trace_dst: 'ghost-01' is neither a host, a group, a tag expression (key=value) nor an IP address",
    ]


def test_matrix_cells(fleet):
    lines = format_matrix(trace(fleet, "all", "all", "tcp/5432"), "tcp/5432")
    assert lines[0].split() == ["tcp/5432", "1", "2", "3", "4", "5"]
    assert lines[-1] == "columns: 1=app-01, 2=db-01, 3=legacy-01, 4=web-01, 5=web-02"
    assert lines[1].split() == ["app-01", ".", "+20", "+byp", "x", "~"]
    assert lines[5].split() == ["web-02", "x30", "x30", "+byp", "x30", "."]
