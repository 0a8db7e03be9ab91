"""The one nft runner (plugins/module_utils/nft/runner.py): its messages, and the listing counts."""

import json

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner
from ansible_collections.mseg.fleet.tests.unit.nft.fake import PATH, FakeNft


def test_kernel_without_nf_tables(monkeypatch):
    monkeypatch.setattr(runner, "ruleset_genid", lambda: None)
    fake = FakeNft()
    fake.kernel_error = "Error: Could not process rule: Operation not supported\n"
    with pytest.raises(MsegError) as err:
        runner.Nft(PATH, fake).probe()
    assert "kernel has no usable nf_tables support" in str(err.value) and "nothing was changed" in str(err.value)


def test_invalid_ruleset_message_names_the_error():
    fake = FakeNft()
    fake.reject = "/dev/stdin:7:20-25: Error: syntax error, unexpected string\n"
    with pytest.raises(MsegError) as err:
        runner.Nft(PATH, fake, translate=False).check("x")
    assert str(err.value).startswith("nft rejected the ruleset (nft -c -f): content:7:20-25: Error: syntax error")
    assert [argv for argv, _input in fake.calls][1:] == [[PATH, "-j", "-c", "-f", "-"]]
    assert fake.table is None


def test_a_missing_table_lists_as_none_and_has_no_counters():
    nft = runner.Nft(PATH, FakeNft())
    assert nft.listing() is None
    assert nft.counters() is None


def test_a_listing_nft_cannot_read_is_an_error():
    fake = FakeNft()
    fake.kernel_error = "Error: Operation not permitted\n"
    with pytest.raises(MsegError) as err:
        runner.Nft(PATH, fake).listing()
    assert str(err.value) == "nft cannot list table inet mseg: Error: Operation not permitted"


def test_counters_are_read_by_name_and_sorted():
    fake = FakeNft()
    nft = runner.Nft(PATH, fake)
    nft.load("table inet mseg {}\ndelete table inet mseg\ntable inet mseg {\n counter rule_7_in {\n }\n"
             " counter mgmt_in {\n }\n}\n")
    fake.counters["rule_7_in"] = (3, 180)
    assert nft.counters() == [("mgmt_in", 0, 0), ("rule_7_in", 3, 180)]


def test_counters_in_a_form_nft_does_not_document(monkeypatch):
    fake = FakeNft()
    runner.Nft(PATH, fake).load("table inet mseg {}\ndelete table inet mseg\ntable inet mseg {\n}\n")
    monkeypatch.setattr(fake, "_counters", lambda: json.dumps(["not", "an", "object"]))
    with pytest.raises(MsegError) as err:
        runner.Nft(PATH, fake).counters()
    assert "in a form it does not document" in str(err.value)


def test_nft_missing(monkeypatch):
    monkeypatch.setattr(runner.shutil, "which", lambda *a, **k: None)
    with pytest.raises(MsegError) as err:
        runner.find_nft()
    assert "nft is not installed" in str(err.value)


LISTING = """table inet mseg {
    counter mgmt_in {
    }

    set mgmt_auto_v4 {
        type ipv4_addr . inet_service
        elements = { 192.0.2.10 . 22 }
    }

    set peers_v4 {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/24, 10.1.0.1,
                 10.1.0.3, 10.2.0.0-10.2.0.9,
                 10.3.0.1 }
    }

    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        ip saddr @peers_v4 tcp dport 8080 counter accept comment "ID=1"
        counter drop
    }

    chain output {
        type filter hook output priority filter; policy accept;
    }
}
"""


def test_count_listing():
    assert runner.count_listing(LISTING) == {"rules": 3, "sets": 2, "elements": 6}
    assert runner.count_listing(None) == {"rules": 0, "sets": 0, "elements": 0}


# A connection limit's dynamic set fills from the packet path; an open connection is not drift.
LIMITED = """table inet mseg {
    set peers_v4 {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.1, 10.0.0.2 }
    }

    set sys_controller_connlimit_v4 {
        type ipv4_addr
        size 65535
        flags dynamic
        elements = { 10.0.0.7 ct count over 3 , 10.0.0.8 ct count over 3 ,
                 10.0.0.9 ct count over 3 }
    }

    set sys_controller_connlimit_v6 {
        type ipv6_addr
        size 65535
        flags dynamic
        elements = { fd00::7 ct count over 3 }
    }

    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport { 443, 8443 } ct state new add @sys_controller_connlimit_v4 { ip saddr ct count over 3 } drop
    }
}
""".replace("    ", "\t")


def test_the_listing_leaves_out_the_elements_the_kernel_adds_to_dynamic_sets_only():
    fake = FakeNft()
    fake.table = LIMITED
    listed = runner.Nft(PATH, fake).listing()
    assert "10.0.0.7" not in listed and "fd00::7" not in listed and "10.0.0.9" not in listed
    assert "elements = { 10.0.0.1, 10.0.0.2 }" in listed
    assert listed == runner.stable_listing(LIMITED.replace(
        "\t\telements = { fd00::7 ct count over 3 }\n", ""))
    assert listed.count("flags dynamic") == 2 and listed.endswith("drop\n\t}\n}\n")
    assert runner.count_listing(listed) == {"rules": 1, "sets": 3, "elements": 2}
