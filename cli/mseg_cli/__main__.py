# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``python -m mseg_cli``."""

from mseg_cli.main import main

raise SystemExit(main())
