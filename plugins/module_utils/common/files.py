# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files the way every writer of mseg state writes them: atomically, privately, and under one lock.

The apply engine, the agent, the bundle release and the controller-side actions all use these; there is no second
implementation of an atomic write or of a lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import time

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError

# What read_checked reads at most: state, keys and configuration are kilobytes; a bundle a few MiB.
READ_LIMIT = 16 * 1024 * 1024


def sha256_text(text):
    """The hex sha256 of ``text`` (str, encoded as UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_atomic(path, text, mode=0o600):
    """Write ``text`` (str or bytes) to ``path`` so that a reader (or a crash) sees the old or the new file,
    never a part. The file gets ``mode`` (0600 by default) and, when written by root, root's ownership."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if os.geteuid() == 0:
            os.chown(tmp, 0, 0)
        os.rename(tmp, path)
    except BaseException:
        unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_if_changed(path, text, mode=0o600):
    """``write_atomic`` unless ``path`` already holds ``text``; True when the file changed."""
    if read_text(path) == text:
        return False
    write_atomic(path, text, mode)
    return True


def unlink(path):
    """Remove ``path``; True if it existed. Any error but "does not exist" is raised."""
    try:
        os.unlink(path)
        return True
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return False


def read_text(path):
    """The text of ``path``, or None when it cannot be read."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


class UntrustedFile(MsegError):
    """A file a root process was about to trust is not what it must be (owner, mode, type, size)."""


def read_checked(path, root_owned=True, limit=READ_LIMIT):
    """The bytes of ``path`` as a root process may trust them, or None when it does not exist.

    Opened with ``O_NOFOLLOW`` (a symbolic link is refused, not followed) and ``O_NONBLOCK`` (a FIFO or a device
    never hangs the reader), then checked on the open descriptor (``fstat``, so nothing can be swapped in between):
    a regular file, at most ``limit`` bytes, and with ``root_owned`` owned by uid 0 and writable by nobody else
    (no group or other write). Anything else raises ``UntrustedFile`` naming the file, what is wrong and the fix.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        if exc.errno == errno.ELOOP:
            raise UntrustedFile("%s is a symbolic link; refusing to follow it (replace it with the file itself)"
                                % path)
        raise UntrustedFile("cannot open %s (%s)" % (path, exc.strerror or exc))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFile("%s is not a regular file (a %s); refusing to read it (remove it: the agent "
                                "writes it again)" % (path, _file_type(info.st_mode)))
        if root_owned and (info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            raise UntrustedFile("%s is owned by uid %d with mode %04o; a root process reads it only when root owns "
                                "it and nobody else may write it (chown root:root and chmod go-w it, or rerun the "
                                "role that installs it)" % (path, info.st_uid, stat.S_IMODE(info.st_mode)))
        if info.st_size > limit:
            raise UntrustedFile("%s holds %d bytes, more than the %d read at most; refusing to read it"
                                % (path, info.st_size, limit))
        chunks = []
        size = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise UntrustedFile("%s grew beyond the %d bytes read at most; refusing to read it" % (path, limit))
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_type(mode):
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def printable(text):
    """``text`` safe to print on a terminal or into a log line: every character that is not printable (newlines,
    escape sequences, other control characters) and the backslash itself written as ``\\xNN`` (``\\uNNNN``)."""
    text = str(text)
    out = []
    for char in text:
        if char == "\\":
            out.append("\\x5c")
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append("\\x%02x" % ord(char))
        else:
            out.append("\\u%04x" % ord(char))
    return "".join(out)


class FileLock:
    """An exclusive ``flock`` on ``path`` (created 0600), waited for at most ``timeout`` seconds.

    ``busy(holder)`` builds the exception raised when the wait runs out; ``holder`` is what the holding process
    wrote into the file (``pid N``). Usable as a context manager or with ``acquire()``/``release()``.
    """

    def __init__(self, path, timeout, busy):
        self.path = path
        self.timeout = timeout
        self.busy = busy
        self.fd = None

    def acquire(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    self.release()
                    raise
                if time.monotonic() >= deadline:
                    holder = (read_text(self.path) or "").strip() or "unknown"
                    self.release()
                    raise self.busy(holder)
                time.sleep(0.05)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, ("pid %d" % os.getpid()).encode())
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
