#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bundle_release
short_description: Install a signed release of policy bundles on a controller and switch to it atomically
version_added: 0.1.0
description:
  - Reads a release archive made by C(mseg.fleet.bundle_sign) (copied to the controller) and verifies every
    bundle in it with the public key (the same C(verify) the agents run, checking the signature, that the host
    matches the file, the serial and the validity). Then writes the release as
    C(<path>/releases/<serial>/<host>.json) in a staging directory that is renamed into place when complete,
    and replaces the symlink C(<path>/current) with C(rename(2)). A reader
    therefore always sees one whole release, never a mixture.
  - A release older than the one C(current) points to is refused, so a controller cannot be rolled back to old
    policy, and so is a release whose serial is installed already with other content (two publishes that signed
    one serial). A bundle that fails verification (logged as a signature mismatch when its signature or key is wrong)
    leaves the controller as it was and fails the task.
  - File times are set to the release's creation time, so every replica gives a bundle the same ETag.
  - Each change (and each refusal) is logged to O(log).
author:
  - mseg.fleet contributors (@mseg-fleet)
requirements:
  - cryptography (Debian package python3-cryptography) on the controller
extends_documentation_fragment:
  - mseg.fleet.attributes
  - mseg.fleet.attributes.diff
attributes:
  check_mode:
    description: Verifies the archive and reports whether C(current) would change, without writing.
  diff_mode:
    description: The diff is the serial C(current) points to before and after.
options:
  archive:
    description: Path of the release archive on the controller.
    type: path
    required: true
  public_key:
    description:
      - Path of the PEM Ed25519 public key the bundles must be signed with; during a key rotation the file holds
        the new and the previous key.
    type: path
    required: true
  fleet:
    description: The fleet this controller serves; a release signed for another fleet is refused.
    type: str
    default: default
  path:
    description: Base directory that holds C(releases/) and C(current).
    type: path
    default: /var/lib/mseg-controller
  group:
    description: Group that may read the bundles (the web server's user group); files are 0640, directories 0750.
    type: str
    default: www-data
  keep:
    description: Releases to keep, the current one included.
    type: int
    default: 3
  log:
    description: File the module appends one line per installed or refused release to.
    type: path
    default: /var/log/mseg-controller/publish.log
seealso:
  - module: mseg.fleet.bundle_sign
"""

EXAMPLES = r"""
- name: Switch the controller to the release that was copied to it
  mseg.fleet.bundle_release:
    archive: /var/lib/mseg-controller/incoming/12.json
    public_key: /etc/mseg/bundle-signing.pub
"""

RETURN = r"""
serial:
  description: Serial C(current) points to after the task.
  returned: success
  type: int
  sample: 12
previous_serial:
  description: Serial C(current) pointed to before the task (null when there was none).
  returned: success
  type: int
  sample: 11
hosts:
  description: Number of host bundles in the release.
  returned: success
  type: int
  sample: 240
kind:
  description:
    - Why a release was refused. V(signature) (a bundle's signature or key is wrong, logged as a signature
      mismatch), V(fleet) (signed for another fleet), V(host), V(bounds) (validity window beyond the bound),
      V(expired), V(not_yet_valid), V(format), V(replay) (older than the served release) or V(conflict) (its serial
      is installed already with other content).
  returned: failure
  type: str
  sample: signature
"""

import grp
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import envelope as bundle
from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.bundle import release as bundle_release


def _log(path, line):
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, 0o750)
    with open(path, "a") as handle:
        handle.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), line))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            archive=dict(type="path", required=True),
            public_key=dict(type="path", required=True),
            fleet=dict(type="str", default=contract.DEFAULT_FLEET),
            path=dict(type="path", default="/var/lib/mseg-controller"),
            group=dict(type="str", default="www-data"),
            keep=dict(type="int", default=3),
            log=dict(type="path", default="/var/log/mseg-controller/publish.log"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if bundle.missing_cryptography():
        module.fail_json(msg="mseg.fleet.bundle_release: %s" % bundle.missing_cryptography())
    try:
        gid = grp.getgrnam(params["group"]).gr_gid
    except KeyError:
        module.fail_json(msg="group %s does not exist on this controller; install the web server first or set "
                         "group" % params["group"])
    try:
        with open(params["public_key"], "rb") as handle:
            public_key = handle.read()
        with open(params["archive"], "rb") as handle:
            data = handle.read()
    except (IOError, OSError) as exc:
        module.fail_json(msg="cannot read %s: %s" % (exc.filename, exc.strerror))
    try:
        meta, bundles = bundle_release.load_archive(data, public_key, time.time(), params["fleet"])
        changed, previous = bundle_release.install_release(params["path"], meta, bundles, keep=params["keep"],
                                                           gid=gid, check_mode=module.check_mode)
    except bundle_release.ReleaseError as exc:
        what = "signature mismatch" if exc.kind == "signature" else exc.kind
        if not module.check_mode:
            _log(params["log"], "refused %s (%s): %s" % (params["archive"], what, exc))
        module.fail_json(msg="mseg.fleet.bundle_release: %s; the controller keeps serving its current release" % exc,
                         kind=exc.kind)
    except ValueError as exc:
        module.fail_json(msg="mseg.fleet.bundle_release: the public key %s is unusable: %s"
                         % (params["public_key"], exc))
    serial = int(meta["serial"])
    if changed and not module.check_mode:
        _log(params["log"], "installed release %d (%d bundles, previous %s)" % (serial, len(bundles), previous))
    module.exit_json(changed=changed, serial=serial, previous_serial=previous, hosts=len(bundles),
                     diff={"before": "current: %s\n" % previous, "after": "current: %d\n" % serial})


if __name__ == "__main__":
    main()
