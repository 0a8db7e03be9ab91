"""The wire filter hands roles and playbooks the contract's own values, and refuses names it does not have."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.mseg.fleet.plugins.filter.wire import wire
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract


def test_the_filter_returns_the_contract_value():
    assert wire("EMERGENCY_MARKER") == contract.EMERGENCY_MARKER == "emergency_bypass"
    assert wire("TABLE") == "inet mseg"
    assert wire("HOST_CLI_COMMANDS") == list(contract.HOST_CLI_COMMANDS)


def test_an_unknown_name_fails_with_the_near_miss():
    with pytest.raises(AnsibleFilterError) as err:
        wire("EMERGENCY_MARKR")
    assert "did you mean EMERGENCY_MARKER" in str(err.value)


def test_private_and_callable_names_are_not_part_of_the_contract():
    for name in ("rule_counter", "_ID", "re"):
        with pytest.raises(AnsibleFilterError):
            wire(name)
