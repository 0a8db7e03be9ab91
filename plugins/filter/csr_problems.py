# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why the CA must not sign a CSR a host returned (the pki role's check before every signature)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: csr_problems
short_description: Check a certificate signing request against the identity the control node expects
version_added: 0.2.0
description:
  - Runs on the control node. Parses a PEM certificate signing request that a managed host returned and lists,
    one sentence each, everything in it that differs from the request the control node expects; an empty list
    means the CA may sign it.
  - The CSR must carry exactly the subject C(CN=<common_name>) and nothing else; exactly the subject alternative
    names O(subject_alt_name) (C(DNS:), C(IP:) or C(URI:) names, compared in canonical form, no more and no
    fewer); basic constraints C(CA:FALSE); key usage C(digitalSignature) alone; exactly the extended key usages
    O(extended_key_usage); no other extension; a key of the configured type (ECC on secp256r1, secp384r1 or
    secp521r1, or RSA of at least 2048 bits with exponent 65537); and a signature that verifies with its own key.
  - A malformed expectation (an entry of O(subject_alt_name) that is not a C(DNS:), C(IP:) or C(URI:) name, an
    unknown extended key usage) fails the task with a message that names it.
author:
  - mseg.fleet contributors (@mseg-fleet)
options:
  _input:
    description: The certificate signing request, PEM.
    type: str
    required: true
  common_name:
    description: The only subject the CSR may carry, as C(CN=<common_name>) (the inventory name).
    type: str
    required: true
  subject_alt_name:
    description: The subject alternative names the control node asked for, as C(DNS:name), C(IP:address) or C(URI:uri).
    type: list
    elements: str
    required: true
  extended_key_usage:
    description: The profile's extended key usages.
    type: list
    elements: str
    choices: [clientAuth, serverAuth]
    required: true
  key_type:
    description: The key algorithm the role configures.
    type: str
    choices: [ECC, RSA]
    required: true
  key_curve:
    description: The curve of an ECC key.
    type: str
    choices: [secp256r1, secp384r1, secp521r1]
  key_size:
    description: The size in bits of an RSA key (at least 2048).
    type: int
"""

EXAMPLES = r"""
- name: Refuse a CSR that asks for more than this host's own identity
  ansible.builtin.assert:
    that: __problems | length == 0
    fail_msg: "{{ inventory_hostname }}: CSR refused: {{ __problems | join('; ') }}"
  vars:
    __problems: >-
      {{ csr_pem | mseg.fleet.csr_problems(common_name=inventory_hostname, subject_alt_name=['DNS:web-01'],
                                           extended_key_usage=['clientAuth'], key_type='ECC', key_curve='secp256r1') }}
"""

RETURN = r"""
_value:
  description: One sentence per problem found; empty when the CSR is exactly what the control node expects.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.pki.csr import CRYPTOGRAPHY_IMPORT_ERROR  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.pki.csr import csr_problems as check  # noqa: E402


def csr_problems(pem, common_name, subject_alt_name, extended_key_usage, key_type, key_curve=None, key_size=None):
    if key_type not in ("ECC", "RSA"):
        raise AnsibleFilterError("csr_problems: key_type must be ECC or RSA, not %r" % (key_type,))
    key = {"type": "ECC", "curve": key_curve} if key_type == "ECC" else {"type": "RSA", "size": int(key_size or 0)}
    if CRYPTOGRAPHY_IMPORT_ERROR is not None:
        raise AnsibleFilterError("csr_problems needs the Python package cryptography on the control node (%s): "
                                 "install it in Ansible's Python, e.g. pip install cryptography"
                                 % CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        return check(pem, str(common_name), list(subject_alt_name), list(extended_key_usage), key)
    except ValueError as exc:
        raise AnsibleFilterError("csr_problems: the expected identity is malformed: %s (check pki_addresses and "
                                 "pki_extra_sans)" % exc)


class FilterModule(object):
    def filters(self):
        return {"csr_problems": csr_problems}
