"""Run the apply engine once on the ruleset read from stdin, in whatever network namespace this runs in.

``apply_driver.py STATE_DIR UNIT_DIR`` prints the engine's result, or ``{"failed": true, "msg": ...}``, as JSON.
The integration tests run it with ``Fleet.run`` so that nft_apply's engine acts on one namespace only.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.mseg.fleet.plugins.module_utils.apply.engine import Request, apply  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError  # noqa: E402


def main():
    state_dir, unit_dir = sys.argv[1], sys.argv[2]
    try:
        result = apply(Request(sys.stdin.read(), "present", state_dir=state_dir, unit_dir=unit_dir))
    except MsegError as exc:
        result = {"failed": True, "msg": str(exc)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
