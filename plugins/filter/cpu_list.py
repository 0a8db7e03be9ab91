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
from ansible_collections.mseg.fleet.plugins.module_utils.host.kernel import parse_cpu_list  # noqa: E402


def cpu_list(value):
    try:
        return parse_cpu_list(value, strict=True)
    except ValueError:
        raise AnsibleFilterError("cpu_list: %r is not a CPU list; write CPU numbers and ranges such as 1 or "
                                 "'0-3,6' or [2, 3]" % (value,))


class FilterModule(object):
    def filters(self):
        return {"cpu_list": cpu_list}
