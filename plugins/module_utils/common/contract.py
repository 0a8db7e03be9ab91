# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The wire contract: every name that crosses a boundary between a writer and a reader, defined once.

Writers (the renderer, the bypass table, the apply engine, the restore script) and readers (the observe report, the
agent's drop log, the counter readers, the policy role, the host CLI) import these names; none of them spells one
out. The contract also reserves what later features use, so that they cannot collide:

* the packet mark: its low 16 bits carry a sender's identity on the overlay (VXLAN-GBP carries exactly these 16
  bits; 0 is no identity), the high 16 bits are reserved;
* the conntrack mark: its low 16 bits hold the id of the rule that decided a connection (rule ids are 1..65535,
  0 is the default or a system rule) and bit 16 says that mseg decided it at all (without it, 0 could not tell
  "decided by the default" from "never marked"); the bits above are reserved;
* the NFLOG groups for machine-read drop, audit and log records, beside the kernel log lines people read;
* the table's chain, set, map and counter names.

Marks are shared with every other table on the host (kube-proxy, wg-quick and others use bits of them), so a
ruleset writes only its own bits and keeps the rest: ``meta mark set meta mark & 0xffff0000 | 0x00000400``, never
``meta mark set 0x400``. ``check_ruleset`` is the allowlist: it names every chain, set, counter, mark write and log
channel in a ruleset that the contract does not assign (``tests/unit/common/test_contract.py`` runs it on every
rendered ruleset, and shows that it rejects what it must).
"""

from __future__ import annotations

import re

# --- the table -------------------------------------------------------------------------------------------------
TABLE_FAMILY = "inet"
TABLE_NAME = "mseg"
TABLE = "%s %s" % (TABLE_FAMILY, TABLE_NAME)

DIRECTIONS = ("ingress", "egress")
SUFFIX = {"ingress": "in", "egress": "out"}
BASE_CHAIN = {"ingress": "input", "egress": "output"}
HOOK = {"ingress": "input", "egress": "output"}
# Reserved base chains: workloads' traffic on the forward path, and the mangle-priority chain that marks overlay
# traffic with the sender's identity before any accept.
FORWARD_CHAIN = "forward"
IDENTITY_CHAIN = "identity"

# --- marks -----------------------------------------------------------------------------------------------------
MARK_BITS = 0xFFFFFFFF
PACKET_MARK_IDENTITY_MASK = 0x0000FFFF
PACKET_MARK_RESERVED_MASK = MARK_BITS & ~PACKET_MARK_IDENTITY_MASK
CT_MARK_RULE_MASK = 0x0000FFFF
CT_MARK_DECIDED = 0x00010000
CT_MARK_RESERVED_MASK = MARK_BITS & ~(CT_MARK_RULE_MASK | CT_MARK_DECIDED)
# The bits of each mark a ruleset may write (masked, keeping every other bit). Nothing writes a mark yet.
ASSIGNED_MARKS = {"meta mark": PACKET_MARK_IDENTITY_MASK, "ct mark": CT_MARK_RULE_MASK | CT_MARK_DECIDED}

# --- log channels ----------------------------------------------------------------------------------------------
# A rule id as names carry it: 0 (the default) to 65535, what the conntrack mark's 16 bits can hold.
_ID = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"
# Kernel log lines for people: "[MSEG-DROP] ID=1024 " then the kernel's IN= OUT= SRC= ... fields.
LOG_KINDS = ("DROP", "AUDIT", "LOG")
LOG_TAG = {kind: "[MSEG-%s]" % kind for kind in LOG_KINDS}
LOG_LIMIT = "limit rate 10/second burst 20 packets"
# NFLOG groups for machine-read records of the same events (the renderer writes them beside every log line; the
# agent's drop log reads them, agent/nflog.py). A log statement
# with a group goes to that group instead of the kernel log, so a record for machines is a second log statement,
# with the same prefix and its kind's group.
NFLOG_GROUP = {"DROP": 2710, "AUDIT": 2711, "LOG": 2712}


def log_tag(kind):
    """``[MSEG-DROP]``, ``[MSEG-AUDIT]`` or ``[MSEG-LOG]``."""
    if kind not in LOG_TAG:
        raise ValueError("unknown log kind %r" % (kind,))
    return LOG_TAG[kind]


def log_prefix(kind, rule_id):
    """The kernel log prefix of a rule: ``[MSEG-DROP] ID=1024 `` (0 is the direction's default)."""
    return "%s ID=%d " % (log_tag(kind), rule_id)


# A kernel log line carrying one of the prefixes above, as the kernel prints it (``readers``: observe, drop log).
LOG_LINE_RE = re.compile(
    r"\[MSEG-(?P<kind>%s)\] ID=(?P<id>\d+) IN=(?P<iif>\S*) OUT=(?P<oif>\S*)"
    r".*? SRC=(?P<src>\S+) DST=(?P<dst>\S+)"
    r".*? PROTO=(?P<proto>\S+)(?:.*? DPT=(?P<dport>\d+))?" % "|".join(LOG_KINDS))
LOG_PREFIX_RE = re.compile(r"^\[MSEG-(?P<kind>%s)\] ID=(?P<id>%s) $" % ("|".join(LOG_KINDS), _ID))

# --- counters --------------------------------------------------------------------------------------------------
MGMT_COUNTER = "mgmt_in"
# Every bypass table counts into BYPASS_MARKER. The emergency table (mseg.fleet.bypass, the agent's local override)
# also counts into EMERGENCY_MARKER, which tells it apart from an inventory's mseg_mode: bypass: the policy role
# keeps an emergency bypass until the operator lifts it, but follows the inventory otherwise.
BYPASS_MARKER = "mode_bypass"
EMERGENCY_MARKER = "emergency_bypass"
# The table the boot restore loads when the persisted ruleset is rejected.
FAILSAFE_MARKER = "mode_failsafe"
# The counters that say what kind of table is live (nft_counters reports which of them the live table carries).
MARKERS = (BYPASS_MARKER, EMERGENCY_MARKER, FAILSAFE_MARKER)


def rule_counter(rule_id, direction):
    """``rule_1024_in``: the packets rule 1024 matched on ``direction``."""
    return "rule_%d_%s" % (rule_id, SUFFIX[direction])


def default_counter(direction):
    return "default_%s" % SUFFIX[direction]


def invalid_counter(direction):
    return "invalid_%s" % SUFFIX[direction]


_RULE_COUNTER_RE = re.compile(r"^rule_(?P<id>[1-9][0-9]{0,4})_(?P<suffix>in|out)$")
_DIRECTION_OF = {suffix: direction for direction, suffix in SUFFIX.items()}


def parse_rule_counter(name):
    """``(rule_id, direction)`` for a rule counter name, else None."""
    found = _RULE_COUNTER_RE.match(name or "")
    if not found:
        return None
    return int(found.group("id")), _DIRECTION_OF[found.group("suffix")]


def counter_direction(name):
    """``ingress``/``egress`` for a counter that belongs to one direction (``rule_5_in``, ``default_out`` …)."""
    for direction, suffix in SUFFIX.items():
        if name.endswith("_" + suffix):
            return direction
    return None


# --- sets, maps and regular chains -----------------------------------------------------------------------------
MGMT_AUTO_SET = {4: "mgmt_auto_v4", 6: "mgmt_auto_v6"}


def mgmt_set(position, version):
    return "mgmt_%d_v%d" % (position, version)


def rule_set(rule_id, direction, version):
    return "r%d_%s_v%d" % (rule_id, SUFFIX[direction], version)


def allow_map(head_id, direction, version):
    return "allow_%d_%s_v%d" % (head_id, SUFFIX[direction], version)


def deny_chain(rule_id, direction):
    return "deny_%d_%s" % (rule_id, SUFFIX[direction])


def allow_chain(rule_id, direction):
    return "allow_%d_%s" % (rule_id, SUFFIX[direction])


_DIR = "(?:in|out)"
NAMES = {
    "chain": re.compile(r"^(?:input|output|%s|%s|(?:deny|allow)_%s_%s)$" % (FORWARD_CHAIN, IDENTITY_CHAIN, _ID, _DIR)),
    "set": re.compile(r"^(?:mgmt_auto_v[46]|mgmt_[0-9]+_v[46]|r%s_%s_v[46]|allow_%s_%s_v[46])$"
                      % (_ID, _DIR, _ID, _DIR)),
    "counter": re.compile(r"^(?:rule_%s_%s|(?:default|invalid)_%s|%s|%s|%s|%s)$" % (
        _ID, _DIR, _DIR, MGMT_COUNTER, BYPASS_MARKER, EMERGENCY_MARKER, FAILSAFE_MARKER)),
}

# --- files on the host -----------------------------------------------------------------------------------------
STATE_DIR = "/etc/mseg"
UNIT_DIR = "/etc/systemd/system"
RULESET_FILE = "ruleset.nft"          # the persisted ruleset (sha256 header + transaction), loaded at boot
PREVIOUS_FILE = "ruleset.prev.nft"    # the table that was live before the last apply, as a loadable transaction
LIVE_FILE = "live.nft"                # the live table as listed right after the last apply (drift detection)
STATE_FILE = "state.json"             # hashes, generation id and counts recorded by the last apply
RESTORE_SCRIPT_FILE = "restore.sh"    # run by RESTORE_UNIT at boot
LOCK_FILE = "lock"                    # serialises applies on one host
TXN_DIR = "txn"                       # commit-confirmed transactions
RESTORE_UNIT = "mseg-restore.service"
HASH_HEADER = "# mseg-sha256: "
# The agent's runtime log: its drop log writes the NFLOG events and heartbeats there; the observe report reads them.
AGENT_RUNTIME_LOG = "/var/log/mseg-agent/runtime.log"

# --- the host CLI ----------------------------------------------------------------------------------------------
HOST_CLI = "mseg"                     # the operator's command on an agent host
AGENT_COMMAND = "mseg-agent"          # the service's command (run, restore)
HOST_CLI_DIR = "/usr/sbin"
AGENT_COMMANDS = ("run", "restore")
HOST_CLI_COMMANDS = ("status", "mode", "rollback", "trace")

# --- the allowlist: what a ruleset may write -------------------------------------------------------------------
_DECLARED = {"chain": "chain", "set": "set", "map": "set", "counter": "counter"}  # maps share the sets' names
_TOKEN_RE = re.compile(r'"[^"]*"|[^\s"]+')
_MARK_SET_RE = re.compile(r"(?:\b(meta|ct)\s+)?\bmark\s+set\b")
_NUMBER = r"(0x[0-9a-fA-F]+|[0-9]+)"
_MASKED_SET_RE = re.compile(r"(?:(meta|ct)\s+)?mark\s+set\s+(?:(meta|ct)\s+)?mark\s+(?:&|and)\s+%s"
                            r"(?:\s+(?:\||or)\s+%s)?(?=\s|$)" % (_NUMBER, _NUMBER))
_LOG_OPTIONS = ("prefix", "group", "level", "snaplen", "queue-threshold", "flags")


def check_ruleset(text):
    """What an ``nft -f`` text writes that the contract does not assign, one sentence each (empty when it keeps
    to the contract): chain, set, map and counter names outside ``NAMES``; a mark written other than in its
    assigned bits (``ASSIGNED_MARKS``, keeping every other bit); a log statement without a contract prefix, or
    with an NFLOG group that is not its kind's (``NFLOG_GROUP``)."""
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = _TOKEN_RE.findall(line)
        where = "line %d (%s)" % (number, line if len(line) <= 80 else line[:77] + "...")
        if len(tokens) == 3 and tokens[0] in _DECLARED and tokens[2] == "{":
            kind = _DECLARED[tokens[0]]
            if not NAMES[kind].match(tokens[1]):
                problems.append("%s: %s %s is not a %s name of the contract" % (where, tokens[0], tokens[1], kind))
            continue
        problems.extend("%s: %s" % (where, p) for p in _mark_problems(" ".join(
            '""' if t.startswith('"') else t for t in tokens)))
        problems.extend("%s: %s" % (where, p) for p in _log_problems(tokens))
    return problems


def _mark_problems(line):
    found = []
    for write in _MARK_SET_RE.finditer(line):
        selector = "%s mark" % (write.group(1) or "meta")
        masked = _MASKED_SET_RE.match(line, write.start())
        assigned = ASSIGNED_MARKS[selector]
        if masked and "%s mark" % (masked.group(2) or "meta") == selector:
            keep = int(masked.group(3), 0)
            value = int(masked.group(4) or "0", 0)
            if keep == MARK_BITS & ~assigned and not value & ~assigned:
                continue
        keep = MARK_BITS & ~assigned
        found.append("writes %s outside the bits the contract assigns it (write it as '%s set %s & 0x%08x | "
                     "VALUE' with VALUE inside 0x%08x)" % (selector, selector, selector, keep, assigned))
    return found


def _log_problems(tokens):
    found = []
    for index, token in enumerate(tokens):
        if token != "log":
            continue
        options = {}
        at = index + 1
        while at + 1 < len(tokens) and tokens[at] in _LOG_OPTIONS:
            options[tokens[at]] = tokens[at + 1]
            at += 2
        prefix = options.get("prefix", "")
        named = LOG_PREFIX_RE.match(prefix[1:-1] if prefix.startswith('"') else "")
        if named is None:
            found.append("logs with prefix %s, not one of the contract's (log_prefix(kind, rule_id))" % (
                prefix or "(none)"))
        elif "group" in options and options["group"] != str(NFLOG_GROUP[named.group("kind")]):
            found.append("logs %s to NFLOG group %s; the contract assigns group %d to %s records" % (
                prefix, options["group"], NFLOG_GROUP[named.group("kind")], named.group("kind")))
    return found
