# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parse a Linux CPU list (``0-3,6``) into sorted CPU numbers."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: cpu_list
short_description: Parse a Linux CPU list such as C(0-3,6) into a sorted list of CPU numbers
version_added: 0.1.0
description:
  - Accepts the format of C(/sys/devices/system/cpu/online) and of systemd's C(CPUAffinity=) (ranges with C(-),
    items separated by commas or spaces), a single integer, or a list of integers and such strings.
  - Returns the sorted, de-duplicated CPU numbers. Anything else fails with a message that quotes the input.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  _input:
    description: The CPU list.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Online CPUs of the host
  ansible.builtin.debug:
    msg: "{{ '0-3,6' | mseg.fleet.cpu_list }}"  # [0, 1, 2, 3, 6]
"""

RETURN = r"""
_value:
  description: Sorted CPU numbers.
  type: list
  elements: int
"""

from ansible.errors import AnsibleFilterError  # noqa: E402


def _items(value):
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        yield value
    elif isinstance(value, str):
        for word in value.replace(",", " ").split():
            first, sep, last = word.partition("-")
            if sep:
                low, high = int(first), int(last)
                if high < low:
                    raise ValueError
                yield from range(low, high + 1)
            else:
                yield int(word)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _items(item)
    else:
        raise ValueError


def cpu_list(value):
    try:
        cpus = sorted(set(_items(value)))
    except ValueError:
        raise AnsibleFilterError("cpu_list: %r is not a CPU list; write CPU numbers and ranges such as 1 or "
                                 "'0-3,6' or [2, 3]" % (value,))
    if any(cpu < 0 for cpu in cpus):
        raise AnsibleFilterError("cpu_list: %r contains a negative CPU number" % (value,))
    return cpus


class FilterModule(object):
    def filters(self):
        return {"cpu_list": cpu_list}
