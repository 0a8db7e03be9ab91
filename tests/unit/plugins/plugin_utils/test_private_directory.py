"""Rendered rulesets, plans and reports go only into a directory no one else can change (issue 15 item 13)."""

import os

import pytest

from ansible_collections.mseg.fleet.plugins.plugin_utils.action import private_directory


def test_a_new_directory_is_created_private(tmp_path):
    target = tmp_path / "render"
    assert private_directory(str(target)) is None
    assert os.stat(target).st_mode & 0o777 == 0o700


def test_a_directory_planted_by_someone_else_is_refused(tmp_path):
    """Another user created /tmp/mseg-render first (here: uid 65534), so they could swap the files."""
    if os.geteuid() != 0:
        pytest.skip("needs root to plant a directory owned by another uid")
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    planted = shared / "mseg-render"
    planted.mkdir()
    os.chown(planted, 65534, 65534)
    assert "belongs to uid 65534" in private_directory(str(planted))


def test_a_symbolic_link_and_a_writable_directory_are_refused(tmp_path):
    real = tmp_path / "theirs"
    real.mkdir()
    link = tmp_path / "render"
    link.symlink_to(real)
    assert "is not a directory" in private_directory(str(link))
    os.chmod(real, 0o777)
    assert "writable by others (mode 0777)" in private_directory(str(real))


def test_a_world_writable_parent_needs_the_sticky_bit(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    assert "writable by everyone without the sticky bit" in private_directory(str(shared / "render"))
    os.chmod(shared, 0o1777)
    assert private_directory(str(shared / "render")) is None
