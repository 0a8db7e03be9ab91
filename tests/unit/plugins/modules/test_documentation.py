"""Every module's DOCUMENTATION, EXAMPLES and RETURN are YAML that ansible-doc can read (a stray ': ' in a
description line turns it into a mapping key and hides the whole page); ansible-test sanity checks the rest."""

import importlib
import os

import pytest
import yaml

MODULES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "plugins", "modules")
NAMES = sorted(name[:-3] for name in os.listdir(MODULES) if name.endswith(".py") and not name.startswith("_"))


@pytest.mark.parametrize("name", NAMES)
def test_the_documentation_is_yaml(name):
    module = importlib.import_module("ansible_collections.mseg.fleet.plugins.modules." + name)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["module"] == name
    assert all(isinstance(line, str) for line in doc["description"]), doc["description"]
    for option, spec in (doc.get("options") or {}).items():
        described = spec["description"] if isinstance(spec["description"], list) else [spec["description"]]
        assert all(isinstance(line, str) for line in described), (option, described)
    yaml.safe_load(module.EXAMPLES)
    yaml.safe_load(module.RETURN)
