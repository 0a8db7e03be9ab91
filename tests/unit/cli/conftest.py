"""mseg-cli is its own package (cli/), installed on the control node beside Ansible: import it from the checkout."""

import os
import sys

CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                   "cli")
if CLI not in sys.path:
    sys.path.insert(0, CLI)
