#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bundle_sign
short_description: Sign every host's compiled ruleset into a release of policy bundles on the control node
version_added: 0.1.0
description:
  - Turns the rulesets of C(mseg.fleet.compile) into one signed bundle per host (docs/bundles.md), that is the ruleset
    and its metadata (host, serial, policy digest, mode, created-at, valid-until) with a detached Ed25519
    signature, and writes them as one release archive C(<state_dir>/releases/<serial>.json), the file
    C(mseg.fleet.bundle_release) installs on the controllers.
  - Idempotent. A new release (the serial grows by one) is signed only when a host, a ruleset, a mode, the policy
    digest, the fleet, the bundle format or the signing key changed, or when the current release has less than
    O(renew) seconds of validity left; otherwise the current release is returned and nothing is written.
  - Holds an exclusive lock (C(<state_dir>/publish.lock)) from reading the last serial to recording the new
    release, so two publishes never sign one serial with different content.
  - Never creates the signing key; a missing key fails with how to create it (the C(mseg.fleet.signing_key)
    playbook).
  - Runs where the signing key is, the control node (C(delegate_to=localhost), C(run_once=true)).
author:
  - mseg.fleet contributors (@mseg-fleet)
requirements:
  - cryptography on the control node
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.no_diff
attributes:
  check_mode:
    description: Reports whether a new release would be signed and its serial, without writing.
  diff_mode:
    description: A release is a set of signed files; RV(serial) and RV(reason) say what changed.
options:
  signing_key:
    description:
      - Path of the PEM (PKCS#8) Ed25519 private key, encrypted with O(signing_key_passphrase) (made by the
        C(mseg.fleet.signing_key) playbook).
    type: path
    required: true
  signing_key_passphrase:
    description:
      - Passphrase of O(signing_key) (and of O(previous_signing_key)). Leave it out only for an unencrypted key.
    type: str
  previous_signing_key:
    description:
      - During a key rotation, the previous key (same passphrase). Every bundle then carries its endorsement of
        O(signing_key), so agents that trust only the previous key accept the new one; the endorsement is made
        once per rotation (C(<state_dir>/endorsement.json)).
    type: path
  rotation_overlap:
    description:
      - Seconds, from the endorsement, during which agents that saw it still accept bundles of the previous key.
    type: int
    default: 86400
  fleet:
    description: Fleet name every bundle carries; agents of another fleet refuse the bundles.
    type: str
    default: default
  state_dir:
    description: Directory for C(state.json) and C(releases/). Created (0700) if missing.
    type: path
    required: true
  rulesets:
    description: Rendered ruleset per inventory host name (C(rulesets) returned by C(mseg.fleet.compile)).
    type: dict
    required: true
  modes:
    description:
      - Mode (V(observe), V(enforce) or V(bypass)) per host; every host of O(rulesets) needs one.
      - A value may also be a dictionary with a C(mode) key, so C(summary) returned by C(mseg.fleet.compile) can be
        passed as it is.
    type: dict
    required: true
  policy_digest:
    description: Digest of the compiled policy (C(policy_digest) returned by C(mseg.fleet.compile)).
    type: str
    required: true
  validity:
    description:
      - Seconds a new release stays valid; an agent refuses an expired bundle. At most O(max_validity).
    type: int
    default: 604800
  max_validity:
    description:
      - Longest validity this publish may sign, at most 2592000 (30 days), the bound every agent and controller
        enforces.
    type: int
    default: 2592000
  renew:
    description: Sign a new release when the current one has fewer seconds than this left. Must be less than O(validity).
    type: int
    default: 302400
  keep:
    description: Release archives to keep on the control node.
    type: int
    default: 5
  mode_rulesets:
    description:
      - Per host, its ruleset rendered for other modes (C(mode_rulesets) returned by C(mseg.fleet.compile) with
        C(other_modes=[observe, enforce])). Each bundle then carries them, signed, so that C(mseg mode observe) or
        C(mseg mode enforce) on the host can switch mode without a controller.
    type: dict
    default: {}
seealso:
  - module: mseg.fleet.bundle_release
  - module: mseg.fleet.compile
"""

EXAMPLES = r"""
- name: Sign the compiled rulesets
  mseg.fleet.bundle_sign:
    signing_key: ~/.mseg/bundles/bundle-signing.key
    state_dir: ~/.mseg/bundles
    rulesets: "{{ compiled.rulesets }}"
    modes: "{{ compiled.summary }}"
    policy_digest: "{{ compiled.policy_digest }}"
  delegate_to: localhost
  run_once: true
  register: release
"""

RETURN = r"""
serial:
  description: Serial of the current release (new or unchanged).
  returned: success
  type: int
  sample: 12
archive:
  description: Path of the release archive on the control node.
  returned: success
  type: str
  sample: /root/.mseg/bundles/releases/12.json
created_at:
  description: Creation time of the release (UTC).
  returned: success
  type: str
  sample: "2026-11-29T10:00:00Z"
valid_until:
  description: End of validity of the release (UTC).
  returned: success
  type: str
  sample: "2026-12-06T10:00:00Z"
fleet:
  description: Fleet the bundles are signed for.
  returned: success
  type: str
  sample: prod
key_id:
  description: Identifier of the signing key (first 16 hex digits of the sha256 of the raw public key).
  returned: success
  type: str
  sample: 3f5a0c9e12ab44d0
hosts:
  description: Hosts with a bundle in the release, sorted.
  returned: success
  type: list
  elements: str
  sample: [db-01, web-01]
reason:
  description:
    - Why a new release was signed (V(first release), V(policy changed), V(signing key changed), V(fleet or bundle
      format changed), V(renewal ...), V(release archive missing)) or V(unchanged).
  returned: success
  type: str
  sample: policy changed
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.bundle.release import ReleaseError, sign_release


def main():
    module = AnsibleModule(
        argument_spec=dict(
            signing_key=dict(type="path", required=True),
            signing_key_passphrase=dict(type="str", no_log=True),
            previous_signing_key=dict(type="path"),
            rotation_overlap=dict(type="int", default=86400),
            fleet=dict(type="str", default=contract.DEFAULT_FLEET),
            max_validity=dict(type="int", default=bundle.MAX_VALIDITY),
            state_dir=dict(type="path", required=True),
            rulesets=dict(type="dict", required=True),
            modes=dict(type="dict", required=True),
            policy_digest=dict(type="str", required=True),
            validity=dict(type="int", default=604800),
            renew=dict(type="int", default=302400),
            keep=dict(type="int", default=5),
            mode_rulesets=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if bundle.missing_cryptography():
        module.fail_json(msg="mseg.fleet.bundle_sign: %s" % bundle.missing_cryptography())
    keys = {}
    for option in ("signing_key", "previous_signing_key"):
        if not params[option]:
            continue
        try:
            with open(params[option], "rb") as handle:
                keys[option] = handle.read()
        except (IOError, OSError) as exc:
            module.fail_json(msg="cannot read the bundle signing key %s (%s): create it once with "
                             "'ansible-playbook mseg.fleet.signing_key' (docs/bundles.md, Signing key); publishing "
                             "never creates one" % (params[option], exc.strerror or exc))
    if not module.check_mode and not os.path.isdir(params["state_dir"]):
        os.makedirs(params["state_dir"], 0o700)
    modes = dict((host, value.get("mode") if isinstance(value, dict) else value)
                 for host, value in params["modes"].items())
    try:
        changed, info = sign_release(params["state_dir"], keys["signing_key"], params["rulesets"], modes,
                                     params["policy_digest"], params["validity"], params["renew"],
                                     keep=params["keep"], check_mode=module.check_mode,
                                     mode_rulesets=params["mode_rulesets"],
                                     passphrase=params["signing_key_passphrase"], fleet=params["fleet"],
                                     max_validity=params["max_validity"],
                                     endorsing_key=keys.get("previous_signing_key"),
                                     overlap=params["rotation_overlap"])
    except (ReleaseError, ValueError) as exc:
        module.fail_json(msg="mseg.fleet.bundle_sign: %s" % exc)
    module.exit_json(changed=changed, **info)


if __name__ == "__main__":
    main()
