# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for get-pip.py, used by ansible-test to put pip into the virtualenvs it makes.

ansible-test downloads get-pip.py from a host that is not reachable from our CI; it runs whatever file is cached
at ~/.ansible/test/cache/get_pip_<version>.py instead, and `make sanity` caches this one there. It installs the
pip wheel that ships with Python (ensurepip), then lets that pip install the exact versions ansible-test asks for
from the package index.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys


def main():
    # ensurepip points PIP_CONFIG_FILE at /dev/null for its own run; the install after it must see the
    # machine's pip configuration (index, certificates) again.
    environment = dict(os.environ)
    ensurepip.bootstrap()
    args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    return subprocess.call([sys.executable, "-m", "pip", "install"] + args, env=environment)


if __name__ == "__main__":
    sys.exit(main())
