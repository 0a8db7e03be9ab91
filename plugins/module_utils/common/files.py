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
import tempfile
import time


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
