"""The files the controller-side actions write: atomically, privately, only when they change, predicted in check
mode, and an unwritable directory named with the option that chose it."""

import os
import stat
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.mseg.fleet.plugins.action.compile import ActionModule


def action(check_mode=False):
    instance = object.__new__(ActionModule)
    instance._task = SimpleNamespace(check_mode=check_mode)
    return instance


def test_files_are_written_private_and_rewritten_only_when_they_change(tmp_path):
    directory = str(tmp_path / "render")
    changed, files = action().write_files(directory, {"b.nft": "B\n", "a.nft": "A\n"}, "render_dir")
    assert changed and files == [os.path.join(directory, "a.nft"), os.path.join(directory, "b.nft")]
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(path).st_mode) == 0o600 for path in files)
    inode = os.stat(files[0]).st_ino
    changed, _files = action().write_files(directory, {"b.nft": "B2\n", "a.nft": "A\n"}, "render_dir")
    assert changed and os.stat(files[0]).st_ino == inode
    with open(files[1]) as handle:
        assert handle.read() == "B2\n"
    assert action().write_files(directory, {"b.nft": "B2\n", "a.nft": "A\n"}, "render_dir") == (False, files)


def test_check_mode_tells_whether_a_file_would_change_and_writes_nothing(tmp_path):
    directory = str(tmp_path / "render")
    assert action(check_mode=True).write_files(directory, {"a.nft": "A\n"}, "render_dir") == (True, [])
    assert not os.path.exists(directory)
    action().write_files(directory, {"a.nft": "A\n"}, "render_dir")
    assert action(check_mode=True).write_files(directory, {"a.nft": "A\n"}, "render_dir") == (False, [])
    assert action(check_mode=True).write_files(directory, {"a.nft": "B\n"}, "render_dir") == (True, [])


def test_an_unwritable_directory_fails_naming_the_option_and_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AnsibleActionFail) as err:
        action().write_files(str(blocker / "render"), {"a.nft": "A\n"}, "render_dir",
                             "choose a writable directory with -e mseg_render_dir=DIR")
    assert str(err.value) == ("mseg.fleet.compile: cannot write to render_dir %s/render: Not a directory; choose a "
                              "writable directory with -e mseg_render_dir=DIR" % blocker)
