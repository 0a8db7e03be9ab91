"""The cpu_list filter turns what a user writes for the agent's CPUs into a sorted list, or says what is wrong."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.mseg.fleet.plugins.filter.cpu_list import cpu_list


@pytest.mark.parametrize("value, expected", [
    ("0-3,6", [0, 1, 2, 3, 6]),
    ("0-1 4", [0, 1, 4]),          # systemd's CPUAffinity= separates with spaces
    (3, [3]),
    ([2, "0-1", 2], [0, 1, 2]),
    ([], []),
])
def test_cpu_list_filter(value, expected):
    assert cpu_list(value) == expected


@pytest.mark.parametrize("value", ["0-1,x", "3-1", "-1", -1, True, None, {"cpus": 1}, [0, "two"]])
def test_cpu_list_filter_refuses_what_is_not_a_cpu_list(value):
    with pytest.raises(AnsibleFilterError) as err:
        cpu_list(value)
    assert str(err.value) == ("cpu_list: %r is not a CPU list; write CPU numbers and ranges such as 1 or '0-3,6' "
                              "or [2, 3]" % (value,))
