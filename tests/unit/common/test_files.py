"""common.files: the one atomic write and the one lock every writer of mseg state uses."""

import os
import stat
import threading
import time

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import (
    FileLock, read_text, sha256_text, unlink, write_atomic, write_if_changed,
)


class Busy(MsegError):
    pass


def test_write_atomic_replaces_the_file_with_its_mode_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ruleset.nft"
    path.write_text("old")
    write_atomic(str(path), "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(str(path), b"bytes", 0o644)
    assert path.read_bytes() == b"bytes" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["ruleset.nft"]


def test_write_if_changed_writes_only_a_change(tmp_path):
    path = str(tmp_path / "f")
    assert write_if_changed(path, "a") is True
    before = os.stat(path).st_ino
    assert write_if_changed(path, "a") is False and os.stat(path).st_ino == before
    assert write_if_changed(path, "b") is True and read_text(path) == "b"


def test_read_and_unlink_of_a_missing_file(tmp_path):
    assert read_text(str(tmp_path / "nope")) is None
    assert unlink(str(tmp_path / "nope")) is False
    (tmp_path / "x").write_text("")
    assert unlink(str(tmp_path / "x")) is True


def test_sha256_text():
    assert sha256_text("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_the_lock_excludes_a_second_holder_and_names_the_first(tmp_path):
    path = str(tmp_path / "lock")
    with FileLock(path, 1, Busy):
        started = time.monotonic()
        with pytest.raises(Busy) as err:
            FileLock(path, 0.2, lambda holder: Busy("held by %s" % holder)).acquire()
        assert time.monotonic() - started >= 0.2
        assert str(err.value) == "held by pid %d" % os.getpid()
    with FileLock(path, 0.2, Busy):  # released: free again
        pass


def test_the_lock_waits_for_a_holder_that_lets_go(tmp_path):
    path = str(tmp_path / "lock")
    first = FileLock(path, 1, Busy).acquire()
    threading.Timer(0.2, first.release).start()
    with FileLock(path, 5, Busy):
        pass
