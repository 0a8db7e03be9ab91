"""Make the collection importable as ``ansible_collections.mseg.fleet`` without installing it; shared fixtures."""

import os
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_COLLECTIONS = os.path.join(ROOT, ".build", "collections")
_LINK = os.path.join(_COLLECTIONS, "ansible_collections", "mseg", "fleet")

if not os.path.exists(_LINK):
    os.makedirs(os.path.dirname(_LINK), exist_ok=True)
    os.symlink(ROOT, _LINK)
if _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import


@pytest.fixture(name="load_fleet", scope="session")
def fixture_load_fleet():
    """A loader of ``fixtures/fleet.yml`` (``policy`` and ``hosts``); each call returns a fresh copy to modify."""

    def load():
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fleet.yml"),
                  encoding="utf-8") as handle:
            return yaml.safe_load(handle)

    return load
