"""Under CI a skipped integration test fails with its reason (tests/ci_skips.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import
