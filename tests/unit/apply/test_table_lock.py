"""One lock per table on a host: writers with different state directories (nft_apply's /etc/mseg, the agent's own
state) still never interleave on table inet mseg (issue 15 item 7: "two engines, two locks, one table")."""

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.apply import engine
from ansible_collections.mseg.fleet.plugins.module_utils.apply.persist import Paths
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner
from ansible_collections.mseg.fleet.tests.unit.nft.fake import FakeNft
from ansible_collections.mseg.fleet.tests.unit.nft.samples import RULESET


def test_the_table_lock_comes_from_the_contract():
    assert contract.TABLE_LOCK == "/run/mseg/inet-mseg.lock"
    assert engine.Request(RULESET).table_lock == contract.TABLE_LOCK


def test_two_state_dirs_share_the_table_lock(tmp_path, monkeypatch):
    fake = FakeNft()
    fake.patch_genid(monkeypatch)
    table_lock = str(tmp_path / "run" / "inet-mseg.lock")
    playbook = Paths(str(tmp_path / "etc-mseg"), None)
    agent_request = engine.Request(RULESET, persist=False, state_dir=str(tmp_path / "agent-nft"), unit_dir=None,
                                   lock_timeout=0, table_lock=table_lock)
    with engine.lock(playbook, 0, table_lock):  # nft_apply (or its commit-confirmed worker) holds the table
        with pytest.raises(MsegError, match="another mseg apply holds %s" % table_lock):
            engine.apply(agent_request, runner.Nft(fake.path, fake))
    assert fake.loads == []
    assert engine.apply(agent_request, runner.Nft(fake.path, fake))["changed"] is True


def test_nft_apply_refuses_to_write_the_table_behind_the_agent(tmp_path):
    """On an agent host a playbook's apply (a bypass included) would be undone by the agent, or undo it: refused,
    with the way through the agent named."""
    engine.refuse_on_agent_host(str(tmp_path))  # no agent: nothing to say
    (tmp_path / contract.AGENT_CONFIG_FILE).write_text("{}")
    with pytest.raises(MsegError) as err:
        engine.refuse_on_agent_host(str(tmp_path))
    text = str(err.value)
    assert "owned by mseg-agent" in text and "mseg.fleet.host_cli" in text and "'mseg mode bypass" in text
    assert "nothing was changed" in text
