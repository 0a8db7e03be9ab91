"""Under CI a skipped test is a failed one (the hooks tests/unit and tests/integration import in their conftest).

A test that skips in CI does not run, and a check that does not run proves nothing: CI (``CI`` set, as on the
project's runners, which are root with network namespaces, nftables and the lab) has everything every test here
needs, so a skip there means a missing package or a broken probe, never "not applicable". Locally a skip stays a
skip, with its reason.
"""

import os

import pytest


def under_ci():
    """True when the ``CI`` environment variable is set to anything but an empty, ``0`` or ``false`` value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _fail_skip(report):
    if report.skipped and not hasattr(report, "wasxfail") and under_ci():
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
        report.outcome = "failed"
        report.longrepr = ("skipped under CI, which must run every test (CI=%s): %s"
                           % (os.environ.get("CI"), reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # pylint: disable=unused-argument
    outcome = yield
    _fail_skip(outcome.get_result())
