"""The fake nft (fake.py) models what the apply engine relies on, and refuses what it does not model."""

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner
from ansible_collections.mseg.fleet.tests.unit.nft.fake import PATH, PREAMBLE, FakeNft
from ansible_collections.mseg.fleet.tests.unit.nft.samples import RULESET


def test_a_transaction_replaces_the_table_and_lists_deterministically():
    fake = FakeNft()
    nft = runner.Nft(PATH, fake)
    nft.load(PREAMBLE + RULESET)  # the rendered text carries a preamble of its own: the last one counts
    listing = nft.listing()
    assert listing.startswith("table inet mseg {\nset mgmt_auto_v4 {\n")
    assert "# table ip nat" not in listing and "mseg.fleet ruleset" not in listing
    assert nft.listing() == listing
    nft.load(PREAMBLE + listing)  # a listing loaded again (a backup) lists the same
    assert nft.listing() == listing
    nft.load(PREAMBLE)
    assert nft.listing() is None
    assert len(fake.loads) == 3


def test_the_generation_id_bumps_on_every_load_and_hand_edit(monkeypatch):
    fake = FakeNft()
    fake.patch_genid(monkeypatch)
    first = runner.ruleset_genid()
    runner.Nft(PATH, fake).load(PREAMBLE + RULESET)
    assert runner.ruleset_genid() == first + 1
    fake.edit("table inet mseg {\n}\n")
    assert runner.ruleset_genid() == first + 2
    assert runner.Nft(PATH, fake).listing() == "table inet mseg {\n}\n"


def test_list_tables_shows_the_table_only_while_it_exists():
    fake = FakeNft()
    assert fake([PATH, "list", "tables"], text=True).stdout == ""
    fake([PATH, "-f", "-"], input=PREAMBLE + RULESET, text=True)
    assert fake([PATH, "list", "tables"], text=True).stdout == "table inet mseg\n"


@pytest.mark.parametrize("text", ["flush ruleset\n", "add element inet mseg s { 1.2.3.4 }\n", RULESET])
def test_what_the_fake_does_not_model_is_refused_loudly(text):
    fake = FakeNft()
    with pytest.raises(MsegError) as err:
        runner.Nft(PATH, fake).load(text)
    assert "fake nft" in str(err.value)
    assert fake.table is None and fake.loads == []


def test_other_commands_and_programs_are_not_modelled():
    fake = FakeNft()
    assert fake([PATH, "list", "ruleset"], text=True).returncode == 1
    assert fake(["/usr/bin/unshare", "--net", "sh", "-c", "nft -f -"], text=True).returncode == 127
    assert [argv for argv, _input in fake.calls] == [[PATH, "list", "ruleset"],
                                                     ["/usr/bin/unshare", "--net", "sh", "-c", "nft -f -"]]
    assert fake.commands() == [["list", "ruleset"]]


def test_a_load_the_kernel_refuses_keeps_the_table():
    fake = FakeNft()
    nft = runner.Nft(PATH, fake)
    nft.load(PREAMBLE + RULESET)
    live = nft.listing()
    fake.fail_load = "Error: Could not process rule: No buffer space available\n"
    with pytest.raises(MsegError) as err:
        nft.load(PREAMBLE + "table inet mseg {\n}\n")
    assert "the kernel kept the previous one" in str(err.value)
    assert nft.listing() == live
