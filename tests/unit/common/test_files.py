"""common.files: the one atomic write and the one lock every writer of mseg state uses."""

import os
import stat
import threading
import time

import pytest

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import (
    FileLock, UntrustedFile, printable, read_checked, read_text, sha256_text, unlink, write_atomic, write_if_changed,
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


def _root_file(tmp_path, name="key.pub", data=b"KEY", mode=0o644):
    path = tmp_path / name
    path.write_bytes(data)
    os.chmod(str(path), mode)
    return str(path)


def test_read_checked_reads_a_root_owned_regular_file_and_says_none_for_a_missing_one(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("root-owned files need root")
    assert read_checked(_root_file(tmp_path)) == b"KEY"
    assert read_checked(str(tmp_path / "nope")) is None


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_read_checked_refuses_a_file_others_may_write(tmp_path, mode):
    path = _root_file(tmp_path, mode=mode)
    with pytest.raises(UntrustedFile, match="nobody else may write it"):
        read_checked(path)
    assert read_checked(path, root_owned=False) == b"KEY"


def test_read_checked_refuses_a_file_the_agent_user_owns(tmp_path):
    """The attack: the agent user (not root) writes the key a root process then trusts."""
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    path = _root_file(tmp_path, mode=0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(UntrustedFile, match="owned by uid 65534"):
        read_checked(path)


def test_read_checked_never_follows_a_symbolic_link(tmp_path):
    """The attack: the agent user replaces a state file with a link to a root-only file (or a root-owned key)."""
    target = _root_file(tmp_path, "secret")
    link = tmp_path / "status.json"
    link.symlink_to(target)
    with pytest.raises(UntrustedFile, match="symbolic link"):
        read_checked(str(link), root_owned=False)


def test_read_checked_refuses_a_fifo_without_hanging(tmp_path):
    """The attack: a FIFO in place of a state file hung 'mseg status' forever."""
    fifo = str(tmp_path / "status.json")
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(UntrustedFile, match="not a regular file \\(a FIFO\\)"):
        read_checked(fifo, root_owned=False)
    assert time.monotonic() - started < 1


def test_read_checked_refuses_more_than_its_limit(tmp_path):
    path = _root_file(tmp_path, data=b"x" * 100)
    with pytest.raises(UntrustedFile, match="100 bytes"):
        read_checked(path, root_owned=False, limit=99)


def test_printable_escapes_what_could_forge_a_line_or_drive_a_terminal():
    assert printable("ok é") == "ok é"
    assert printable("a\n2026-01-01T00:00:00Z INFO forged") == "a\\x0a2026-01-01T00:00:00Z INFO forged"
    assert printable("\x1b[2J\r\u202e") == "\\x1b[2J\\x0d\\u202e"
    assert printable("C:\\x0a") == "C:\\x5cx0a"  # an escape written by the attacker stays told apart
