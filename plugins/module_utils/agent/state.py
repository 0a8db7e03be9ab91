# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's state directory: its own files, written atomically, under one lock shared with the CLI.

::

    current.json    the last good envelope (verified, applied unless an override holds it back)
    previous.json   the good envelope before it (``mseg rollback``)
    meta.json       serial (the last accepted), serials (the last serial accepted from each signing key: replay and
                    rollback protection, per key so a rotated key starts afresh), retired (key id -> when a key
                    rotation retires it), etag, bundle fields
    override.json   a local override (``mseg mode bypass``, ``mseg rollback``) that survives restarts
    status.json     what ``mseg status`` shows: mode, serial, policy digest, last poll, last apply, last error
    identity.json   host name, management peers and the public key, so the CLI works without the credentials
    nft/            the apply engine's state directory (recorded listing, backup, lock)
    agent.lock      serialises the agent and the CLI
"""

from __future__ import annotations

import contextlib
import json
import os

from ansible_collections.mseg.fleet.plugins.module_utils.agent.errors import AgentError
from ansible_collections.mseg.fleet.plugins.module_utils.common.files import FileLock, read_checked, unlink, write_atomic


class State:
    """The agent's own files (see the module docstring). Every write is atomic (``common.files.write_atomic``)."""

    def __init__(self, directory):
        self.dir = directory
        self.nft_dir = os.path.join(directory, "nft")

    def path(self, name):
        return os.path.join(self.dir, name)

    def ensure(self):
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            os.makedirs(self.nft_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise AgentError("cannot create the agent state directory %s (%s): it must be writable by the agent "
                             "user (StateDirectory= in mseg-agent.service)" % (self.dir, exc.strerror or exc))

    def read_bytes(self, name):
        """The bytes of one state file, or None when it does not exist. Root's CLI reads the agent user's files
        through this too (``mseg trace``, ``mode``): opened without following links and without blocking on a FIFO,
        a regular file only (``common.files.read_checked``), else an error naming the file."""
        try:
            return read_checked(self.path(name), root_owned=False)
        except OSError as exc:
            raise AgentError("cannot read %s (%s)" % (self.path(name), exc.strerror or exc))

    def read_json(self, name, default=None):
        raw = self.read_bytes(name)
        if raw is None:
            return default
        try:
            return json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            return default

    def replay_state(self, meta):
        """``{key_id: last serial}`` for ``bundle.verify``. A meta.json written before per-key replay state holds
        one serial: it counts for the key that signed the stored bundle (current.json), which it came from."""
        serials = meta.get("serials")
        if isinstance(serials, dict):
            return {kid: serial for kid, serial in serials.items()
                    if isinstance(kid, str) and isinstance(serial, int) and not isinstance(serial, bool)}
        serial = meta.get("serial")
        stored = self.read_json("current.json")
        kid = stored.get("key_id") if isinstance(stored, dict) else None
        if isinstance(serial, int) and not isinstance(serial, bool) and isinstance(kid, str):
            return {kid: serial}
        return {}

    @staticmethod
    def retired_keys(meta):
        """``{key_id: epoch}``: keys a rotation retired, refused from that time on."""
        retired = meta.get("retired")
        if not isinstance(retired, dict):
            return {}
        return {kid: when for kid, when in retired.items() if isinstance(kid, str) and isinstance(when, int)}

    def accepted(self, meta, item):
        """``meta`` updated for the accepted bundle ``item``: its key's serial, and the retirement of the key that
        endorsed it (the earliest time any endorsement named, so a later statement cannot extend an overlap)."""
        serials = dict(self.replay_state(meta), **{item.key_id: item.serial})
        retired = self.retired_keys(meta)
        if item.endorsement is not None:
            old = item.endorsement.endorser
            retired[old] = min(retired.get(old, item.endorsement.endorser_until), item.endorsement.endorser_until)
        return dict(meta, serial=item.serial, serials=serials, retired=retired)

    def write(self, name, data):
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        write_atomic(self.path(name), text)

    def write_json(self, name, data):
        self.write(name, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def remove(self, name):
        return unlink(self.path(name))

    @contextlib.contextmanager
    def locked(self, timeout=60):
        """Exclusive lock shared by the agent and the CLI, so an override and a bundle never interleave."""
        held = FileLock(self.path("agent.lock"), timeout, lambda _holder: AgentError(
            "the agent state %s is locked by another mseg process for more than %ss; try again" % (self.dir, timeout)))
        with held:
            yield
