"""tests/ci_skips.py: under CI a skipped test fails with its reason; elsewhere it stays a skip."""

import os
import shutil
import subprocess
import sys

import pytest

CI_SKIPS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ci_skips.py")

SKIPPING = '''
import pytest

pytestmark_reason = "needs a thing this machine lacks"


def test_runs():
    assert True


@pytest.mark.skipif(True, reason=pytestmark_reason)
def test_skips():
    assert True


@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
'''

SKIPPING_MODULE = '''
import pytest

pytest.skip("no namespaces here", allow_module_level=True)


def test_never():
    assert True
'''


def run(tmp_path, ci, module=False):
    """pytest on a test file that skips one test (or, ``module``, on one that skips at import), with ``CI`` = ci."""
    shutil.copy(CI_SKIPS, tmp_path / "ci_skips.py")
    (tmp_path / "conftest.py").write_text("from ci_skips import pytest_make_collect_report, pytest_runtest_makereport\n")
    (tmp_path / "test_some.py").write_text(SKIPPING_MODULE if module else SKIPPING)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_under_ci_a_skip_fails_with_its_reason(tmp_path, ci):
    proc = run(tmp_path, ci)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed, 1 xfailed, 1 error" in proc.stdout, proc.stdout
    assert "skipped under CI, which must run every test (CI=%s): needs a thing this machine lacks" % ci in proc.stdout


def test_under_ci_a_module_skipped_at_import_is_a_collection_error(tmp_path):
    proc = run(tmp_path, "true", module=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "skipped under CI, which must run every test (CI=true): no namespaces here" in proc.stdout, proc.stdout


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_elsewhere_a_skip_stays_a_skip(tmp_path, ci):
    proc = run(tmp_path, ci)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped, 1 xfailed" in proc.stdout, proc.stdout
    module = run(tmp_path, ci, module=True)
    assert module.returncode == 5 and "1 skipped" in module.stdout, module.stdout + module.stderr
