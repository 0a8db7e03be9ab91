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
``meta mark set 0x400``. ``check_ruleset`` is the allowlist, judged on the JSON form nft itself parsed: it names
every object, chain, statement, mark write and log channel in a ruleset that the contract does not allow
(``tests/unit/common/test_contract.py`` runs it on the JSON form of every rendered ruleset, and shows that it
rejects what it must).
"""

from __future__ import annotations

import functools
import re
import socket

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

# --- IP protocols ----------------------------------------------------------------------------------------------
# The IP protocols a policy names by word besides tcp, udp and icmp (``ports: [vrrp]``); any other one is written
# ``proto/<number>``. Rulesets match them by number (``meta l4proto 112``): minimal hosts have no /etc/protocols.
IP_PROTOCOLS = {"vrrp": 112, "gre": 47, "esp": 50, "ah": 51}
# The numbers the policy spells with their own words (tcp/udp with ports, icmp for ICMP and ICMPv6): proto/<n> may
# not name them, so that one flow has one spelling and trace matches what the ruleset matches.
WORD_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}

# --- system rules ----------------------------------------------------------------------------------------------
# The product's own flows, declared by the roles that need them (compile/system.py), named ``<role>.<flow>``: trace
# says "allowed by system rule controller.vrrp", the ruleset counts each into ``sys_<role>_<flow>_<in|out>``.
SYSTEM_RULES = ("controller.vrrp", "controller.agents", "controller.operators")
# The inventory group whose hosts are the controller replicas (the controller role's default cluster).
CONTROLLER_GROUP = "controllers"
_SYSTEM = "(?:%s)" % "|".join(name.replace(".", "_") for name in SYSTEM_RULES)


def system_counter(name, direction):
    """``sys_controller_vrrp_in``: the packets system rule ``controller.vrrp`` accepted on ``direction``."""
    if name not in SYSTEM_RULES:
        raise ValueError("unknown system rule %r" % (name,))
    return "sys_%s_%s" % (name.replace(".", "_"), SUFFIX[direction])


def system_set(name, direction, version):
    return "%s_v%d" % (system_counter(name, direction), version)


def system_comment(name):
    """The comment a system rule's nft rules carry: ``SYS=controller.vrrp``."""
    return "SYS=%s" % name


# Per-source connection limits a role declares beside its flows (compile/system.py ``Limit``): new connections to
# its ports from one source address beyond N concurrent ones are dropped, before any accept. Each counts what it
# dropped (or, in observe mode, what enforce would drop) into ``sys_<role>_<limit>_in`` and keeps its per-source
# counts in the dynamic sets ``sys_<role>_<limit>_v4`` / ``_v6``, which the kernel fills (``ct count``).
SYSTEM_LIMITS = ("controller.connlimit",)
_LIMIT = "(?:%s)" % "|".join(name.replace(".", "_") for name in SYSTEM_LIMITS)


def limit_counter(name):
    """``sys_controller_connlimit_in``: the new connections limit ``controller.connlimit`` refused (or audited)."""
    if name not in SYSTEM_LIMITS:
        raise ValueError("unknown system limit %r" % (name,))
    return "sys_%s_in" % name.replace(".", "_")


def limit_set(name, version):
    """``sys_controller_connlimit_v4``: the dynamic set of per-source connection counts of one family."""
    if name not in SYSTEM_LIMITS:
        raise ValueError("unknown system limit %r" % (name,))
    return "sys_%s_v%d" % (name.replace(".", "_"), version)


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
    "set": re.compile(r"^(?:mgmt_auto_v[46]|mgmt_[0-9]+_v[46]|r%s_%s_v[46]|allow_%s_%s_v[46]|sys_%s_%s_v[46]|"
                      r"sys_%s_v[46])$" % (_ID, _DIR, _ID, _DIR, _SYSTEM, _DIR, _LIMIT)),
    "counter": re.compile(r"^(?:rule_%s_%s|(?:default|invalid)_%s|sys_%s_%s|sys_%s_in|%s|%s|%s|%s)$" % (
        _ID, _DIR, _DIR, _SYSTEM, _DIR, _LIMIT, MGMT_COUNTER, BYPASS_MARKER, EMERGENCY_MARKER, FAILSAFE_MARKER)),
}
# The connection-limit sets alone: the only sets a rule may add to from the packet path (``_limit_problems``).
LIMIT_SET_RE = re.compile(r"^sys_%s_v(?P<version>[46])$" % _LIMIT)

_DECLARED = {"chain": "chain", "set": "set", "map": "set", "counter": "counter"}  # maps share the sets' names

# --- files on the controller: a render_dir holds <inventory_hostname><RENDERED_SUFFIX> for each host (written by
# mseg.fleet.compile, read by the policy role's apply in a rollout) and plan.json
RENDERED_SUFFIX = ".nft"

# --- files on the host -----------------------------------------------------------------------------------------
STATE_DIR = "/etc/mseg"
UNIT_DIR = "/etc/systemd/system"
RULESET_FILE = "ruleset.nft"          # the persisted ruleset as text (sha256 header + transaction), for people
RULESET_JSON_FILE = "ruleset.json"    # its judged JSON form (sha256 header + document), the one thing loaded at boot
PREVIOUS_FILE = "ruleset.prev.nft"    # the table that was live before the last apply, as a loadable transaction
# LIVE_FILE: the live table as listed after the last apply (drift detection); absent while the generation id proves
# the live table is the document loaded (state.json)
LIVE_FILE = "live.nft"
STATE_FILE = "state.json"             # hashes, generation id and counts recorded by the last apply
RESTORE_SCRIPT_FILE = "restore.sh"    # run by RESTORE_UNIT at boot
LOCK_FILE = "lock"                    # serialises applies on one host
TXN_DIR = "txn"                       # commit-confirmed transactions
RESTORE_UNIT = "mseg-restore.service"
HASH_HEADER = "# mseg-sha256: "
# One owner and one lock per table on a host: every writer of the table (nft_apply's engine, its commit-confirmed
# worker, the agent, the bypass) takes TABLE_LOCK before it reads or loads the table. RUN_DIR is root's, group
# AGENT_GROUP's on agent hosts (the agent role's tmpfiles.d entry), never readable by others: a user who could open
# the lock file could hold it.
RUN_DIR = "/run/mseg"
TABLE_LOCK = "%s/%s-%s.lock" % (RUN_DIR, TABLE_FAMILY, TABLE_NAME)
# On a host with this file in STATE_DIR the agent owns the table: playbooks go through its host CLI, nft_apply
# refuses to write the table behind it.
AGENT_CONFIG_FILE = "agent.json"

# --- identities in certificates -------------------------------------------------------------------------------
# The name only a controller's certificate carries (a URI subject alternative name, in SPIFFE's form). The pki role
# puts it in the controller profile's certificates and refuses it in any other CSR; agents require it of every
# controller they fetch from (agent/pin.py), so a host's own certificate cannot pose as a controller.
CONTROLLER_IDENTITY = "spiffe://mseg.fleet/controller"

# --- the fleet ----------------------------------------------------------------------------------------------
# Which fleet a signed bundle (and, on the certificate side, a controller's name) belongs to: the inventory variable
# FLEET_VAR, DEFAULT_FLEET when unset. An agent refuses a bundle of another fleet, so a stage release signed with a
# key that prod also trusts is still refused by prod.
FLEET_VAR = "mseg_fleet"
DEFAULT_FLEET = "default"
FLEET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# The agent's runtime log: its drop log writes the NFLOG events and heartbeats there; the observe report reads them.
AGENT_RUNTIME_LOG = "/var/log/mseg-agent/runtime.log"
# Push-mode hosts (nft_apply, no agent) collect the same records with the agent's drop log alone: the unit
# DROPLOG_UNIT (the policy role installs it, ``mseg-agent droplog``) writes the same lines to DROPLOG_RUNTIME_LOG,
# which the observe report reads beside AGENT_RUNTIME_LOG.
DROPLOG_UNIT = "mseg-droplog.service"
DROPLOG_RUNTIME_LOG = "/var/log/mseg-droplog/runtime.log"
RUNTIME_LOGS = (AGENT_RUNTIME_LOG, DROPLOG_RUNTIME_LOG)

# --- the host CLI ----------------------------------------------------------------------------------------------
HOST_CLI = "mseg"                     # the operator's command on an agent host
AGENT_COMMAND = "mseg-agent"          # the service's command (run, restore)
HOST_CLI_DIR = "/usr/sbin"
AGENT_COMMANDS = ("run", "restore", "droplog")
HOST_CLI_COMMANDS = ("status", "mode", "rollback", "trace")

# --- the allowlist: what a ruleset may contain ------------------------------------------------------------------
# Judged on the libnftables JSON form (``nft -j list``) object by object, never on text: what nft itself parsed is
# what is judged, and only what was judged is loaded (``nft/jsonform.py``). Later features extend these on purpose.
# Base chains: name -> the hook it may use; every base chain is a filter chain (no nat, no route chains).
BASE_CHAIN_HOOKS = {"input": "input", "output": "output", FORWARD_CHAIN: "forward", IDENTITY_CHAIN: "prerouting"}
BASE_CHAIN_TYPES = ("filter",)
# Statements a rule may hold (JSON keys). Everything else is refused, among them dnat, snat, masquerade, redirect,
# notrack, queue, dup, fwd, tproxy, synproxy, reject, map updates, xt, secmark and ct helpers. A set update
# ("set") is allowed in exactly one shape, a system connection limit (``_limit_problems``).
RULE_STATEMENTS = ("match", "counter", "log", "limit", "accept", "drop", "continue", "return", "jump", "goto",
                   "vmap", "mangle", "set")
_LIMIT_ADDRESS = {"4": "ip", "6": "ip6"}
_LIMIT_SET_TYPE = {"4": "ipv4_addr", "6": "ipv6_addr"}
# Keys each object may carry in the JSON form; ``handle`` is nft's own and dropped before a load.
OBJECT_KEYS = {
    "table": ("family", "name", "handle"),
    "counter": ("family", "table", "name", "handle", "packets", "bytes"),
    "set": ("family", "table", "name", "handle", "type", "flags", "elem", "policy", "size", "comment"),
    "map": ("family", "table", "name", "handle", "type", "map", "flags", "elem", "policy", "size", "comment"),
    "chain": ("family", "table", "name", "handle", "type", "hook", "prio", "policy"),
    "rule": ("family", "table", "chain", "handle", "expr", "comment"),
}
_LOG_KEYS = ("prefix", "group", "level", "snaplen", "queue-threshold", "flags")
# The fields each statement may carry (beside log's and mangle's own checks). A JSON ruleset the host receives as
# is (not as nft's listing of a text) could carry fields nft ignores or interprets otherwise: only these pass.
_STATEMENT_KEYS = {"match": ("op", "left", "right"),
                   "limit": ("rate", "per", "burst", "rate_unit", "burst_unit", "inv"),
                   "counter": ("packets", "bytes"), "jump": ("target",), "goto": ("target",), "vmap": ("key", "data"),
                   "mangle": ("key", "value")}
_BARE_VERDICTS = ("accept", "drop", "continue", "return")
# Set and map key types, and what an element of each may be: a plain address (or one with a prefix length, or a
# range of them), a port number, or an address . port pair; map values are verdicts. Nothing else: a JSON element
# may be an object carrying a timeout, a counter or a comment, which nft's listing of a text never shows.
SET_TYPES = {"ipv4_addr": 4, "ipv6_addr": 6}
CONCAT_TYPES = {("ipv4_addr", "inet_service"): 4, ("ipv6_addr", "inet_service"): 6}
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(r"^%s(?:\.%s){3}\Z" % (_OCTET, _OCTET))
_IPV6_RE = re.compile(r"^[0-9a-f:.]{2,45}\Z")
_MARK_SELECTORS = {("meta", "mark"): "meta mark", ("ct", "mark"): "ct mark"}


def check_ruleset(objects):
    """What a ruleset in the JSON form (``nft -j list`` items, ``[{"chain": {...}}, ...]``) holds that the
    contract does not allow, one sentence each (empty when it keeps to the contract): any object outside table
    inet mseg or of a kind the contract does not list, chain, set, map and counter names outside ``NAMES``, base
    chains other than ``BASE_CHAIN_HOOKS``' filter chains, statements outside ``RULE_STATEMENTS``, a mark written
    other than in its assigned bits (``ASSIGNED_MARKS``, keeping every other bit), a log statement without a
    contract prefix or with an NFLOG group that is not its kind's (``NFLOG_GROUP``)."""
    problems = []
    for item in objects:
        if not isinstance(item, dict) or len(item) != 1:
            problems.append("%s is not one nftables object" % _short(item))
            continue
        (kind, body), = item.items()
        if kind == "metainfo":
            continue
        if kind not in OBJECT_KEYS or not isinstance(body, dict):
            problems.append("a %s is not allowed (a ruleset holds only %s)" % (kind, ", ".join(sorted(OBJECT_KEYS))))
            continue
        where = _where(kind, body)
        if (body.get("family"), body.get("name" if kind == "table" else "table")) != (TABLE_FAMILY, TABLE_NAME):
            problems.append("%s is outside table %s" % (where, TABLE))
            continue
        extra = sorted(set(body) - set(OBJECT_KEYS[kind]))
        if extra:
            problems.append("%s carries %s, which the contract does not allow" % (where, ", ".join(extra)))
        if kind in ("chain", "set", "map", "counter"):
            named = _DECLARED[kind]
            if not NAMES[named].match(str(body.get("name", ""))):
                problems.append("%s is not a %s name of the contract" % (where, named))
        if kind in ("set", "map") and LIMIT_SET_RE.match(str(body.get("name", ""))):
            problems.extend("%s: %s" % (where, p) for p in _limit_set_problems(kind, body))
        if kind == "chain" and "hook" in body:
            if body.get("type") not in BASE_CHAIN_TYPES or BASE_CHAIN_HOOKS.get(body.get("name")) != body["hook"]:
                problems.append("%s is a %s chain on hook %s; the contract allows only filter chains %s" % (
                    where, body.get("type"), body["hook"],
                    ", ".join("%s (hook %s)" % pair for pair in sorted(BASE_CHAIN_HOOKS.items()))))
        if kind in ("set", "map"):
            problems.extend("%s: %s" % (where, p) for p in _set_problems(kind, body))
        if kind == "rule":
            problems.extend("%s: %s" % (where, p) for p in _rule_problems(body.get("expr")))
    return problems


def _set_problems(kind, body):
    """A set's (or map's) type is one of the contract's, and every element is a plain value of that type."""
    key = body.get("type")
    version = CONCAT_TYPES.get(tuple(key)) if isinstance(key, list) else SET_TYPES.get(key)
    if version is None or (kind == "map") != ("map" in body) or body.get("map", "verdict") != "verdict" or (
            kind == "map" and isinstance(key, list)):
        return ["has type %s%s; the contract allows sets of %s and maps of an address type to verdicts" % (
            _short(key), " : %s" % _short(body["map"]) if "map" in body else "",
            ", ".join(sorted(SET_TYPES) + [" . ".join(pair) for pair in sorted(CONCAT_TYPES)]))]
    elements = body.get("elem", [])
    if not isinstance(elements, list):
        return ["holds elements that are not a list"]
    if isinstance(key, list):
        judge = functools.partial(_pair_element, version)
    else:
        judge = functools.partial(_address_element, version)
        if version == 4 and kind == "set":  # the common cases, IPv4 addresses and prefixes, without a call each
            plain = _IPV4_RE.match
            elements = [element for element in elements if not isinstance(element, str) or not plain(element)]
            # the exact type: a bool is an int to isinstance, and JSON true is no prefix length
            elements = [element for element in elements if not (
                isinstance(element, dict) and len(element) == 1 and isinstance(element.get("prefix"), dict)
                and len(element["prefix"]) == 2
                and type(element["prefix"].get("len")) is int  # pylint: disable=unidiomatic-typecheck
                and 0 <= element["prefix"]["len"] <= 32
                and isinstance(element["prefix"].get("addr"), str) and plain(element["prefix"]["addr"]))]
    for element in elements:
        if kind == "map":
            if not (isinstance(element, list) and len(element) == 2 and _verdict_value(element[1])):
                return ["element %s is not an address mapped to a verdict" % _short(element)]
            element = element[0]
        if not judge(element):
            return ["element %s is not a plain %s (an address, prefix or range%s)" % (
                _short(element), key if isinstance(key, str) else " . ".join(key),
                ", then a port" if isinstance(key, list) else "")]
    return []


def _address(version, value):
    if not isinstance(value, str):
        return False
    if version == 4:
        return _IPV4_RE.match(value) is not None
    if not _IPV6_RE.match(value):
        return False
    try:  # the one spelling nft lists (it prints addresses with inet_ntop)
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, value)) == value
    except (OSError, ValueError):
        return False


def _address_element(version, element):
    if isinstance(element, str):
        return _address(version, element)
    if not isinstance(element, dict) or len(element) != 1:
        return False
    (form, value), = element.items()
    if form == "prefix":
        return isinstance(value, dict) and set(value) == {"addr", "len"} and _address(version, value["addr"]) \
            and _prefix_length(value["len"], 32 if version == 4 else 128)
    if form == "range":
        return isinstance(value, list) and len(value) == 2 and all(_address(version, end) for end in value)
    return False


def _prefix_length(value, bits):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= bits


def _port(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


def _pair_element(version, element):
    if not isinstance(element, dict) or list(element) != ["concat"]:
        return False
    pair = element["concat"]
    return isinstance(pair, list) and len(pair) == 2 and _address(version, pair[0]) and _port(pair[1])


def _verdict_value(value):
    """A verdict as a map value: accept, drop, continue, return, or a jump or goto to a chain of the contract."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    (verdict, argument), = value.items()
    if verdict in _BARE_VERDICTS:
        return argument is None
    return verdict in ("jump", "goto") and isinstance(argument, dict) and list(argument) == ["target"] \
        and isinstance(argument["target"], str) and NAMES["chain"].match(argument["target"]) is not None


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _where(kind, body):
    if kind == "rule":
        return "a rule in chain %s" % body.get("chain")
    if kind == "table":
        return "table %s %s" % (body.get("family"), body.get("name"))
    return "%s %s" % (kind, body.get("name"))


def _rule_problems(expr):
    if not isinstance(expr, list):
        return ["has no statement list"]
    found = []
    for statement in expr:
        if not isinstance(statement, dict) or len(statement) != 1:
            found.append("%s is not one statement" % _short(statement))
            continue
        (name, value), = statement.items()
        if name not in RULE_STATEMENTS:
            found.append("statement %s is not allowed (a rule may hold %s)" % (name, ", ".join(RULE_STATEMENTS)))
        elif name in _BARE_VERDICTS and value is not None:
            found.append("statement %s carries %s; it takes no argument" % (name, _short(value)))
        elif name in _STATEMENT_KEYS and isinstance(value, dict) and set(value) - set(_STATEMENT_KEYS[name]):
            found.append("statement %s carries %s, which the contract does not allow" % (
                name, ", ".join(sorted(set(value) - set(_STATEMENT_KEYS[name])))))
        elif name in ("jump", "goto") and not _verdict_value(statement):
            found.append("statement %s goes to %s, not a chain of the contract" % (name, _short(value)))
        elif name == "mangle":
            found.extend(_mark_problems(value))
        elif name == "log":
            found.extend(_log_problems(value))
        elif name == "set":
            found.extend(_limit_problems(value))
    return found


def _limit_set_problems(kind, body):
    """A connection-limit set is a plain set of the source addresses of its family, filled by the kernel only."""
    version = LIMIT_SET_RE.match(body["name"]).group("version")
    flags = body.get("flags", [])
    flags = [flags] if isinstance(flags, str) else flags
    if kind != "set" or body.get("type") != _LIMIT_SET_TYPE[version] or "elem" in body \
            or not isinstance(flags, list) or set(flags) - {"dynamic"}:
        return ["is not a connection-limit set (a set of type %s, flags dynamic at most, without elements)"
                % _LIMIT_SET_TYPE[version]]
    return []


def _limit_problems(value):
    """The one set update a ruleset may hold, a per-source connection limit:
    ``add @sys_<role>_<limit>_v4 { ip saddr ct count over N }`` (``ip6 saddr`` for ``_v6``), N >= 1. Any other
    update (``update``, another set, another key, another stateful statement, ``ct count`` without ``over``) is
    refused: a set the packet path could write is a set an attacker's packets could write."""
    value = value if isinstance(value, dict) else {}
    target = value.get("set")
    found = LIMIT_SET_RE.match(target[1:]) if isinstance(target, str) and target.startswith("@") else None
    expected = None
    if found:
        expected = {"op": "add", "set": target,
                    "elem": {"payload": {"protocol": _LIMIT_ADDRESS[found.group("version")], "field": "saddr"}}}
    stmt = value.get("stmt")
    count = None
    if isinstance(stmt, list) and len(stmt) == 1 and isinstance(stmt[0], dict) and list(stmt[0]) == ["ct count"]:
        count = stmt[0]["ct count"]
    if expected is not None and {k: v for k, v in value.items() if k != "stmt"} == expected \
            and isinstance(count, dict) and set(count) == {"val", "inv"} and count["inv"] is True \
            and isinstance(count["val"], int) and not isinstance(count["val"], bool) and count["val"] >= 1:
        return []
    return ["updates a set other than as a connection limit (the one set update allowed is "
            "'add @%s { ip saddr ct count over N }', ip6 saddr for the _v6 set)" % limit_set(SYSTEM_LIMITS[0], 4)]


def _mark_selector(expr):
    """``meta mark`` / ``ct mark`` for a JSON mark expression, else None."""
    if isinstance(expr, dict) and len(expr) == 1:
        (family, inner), = expr.items()
        if isinstance(inner, dict) and set(inner) == {"key"}:
            return _MARK_SELECTORS.get((family, inner["key"]))
    return None


def _mark_problems(value):
    """A mark write keeps every bit outside its assigned ones: ``MARK set MARK & KEEP | VALUE`` (nft folds VALUE's
    bits into KEEP when it lists the rule) with KEEP covering every unassigned bit and VALUE inside the assigned."""
    value = value if isinstance(value, dict) else {}
    selector = _mark_selector(value.get("key"))
    if selector is None:
        return ["writes %s, which is not a mark the contract assigns" % _short(value.get("key"))]
    assigned = ASSIGNED_MARKS[selector]
    written = value.get("value")
    bits = 0
    if isinstance(written, dict) and list(written) == ["|"] and isinstance(written["|"], list) \
            and len(written["|"]) == 2 and isinstance(written["|"][1], int):
        written, bits = written["|"]
    keep = None
    if _mark_selector(written) == selector:  # nft lists "MARK & 0xffffffff | VALUE" as "MARK | VALUE"
        keep = MARK_BITS
    elif isinstance(written, dict) and list(written) == ["&"] and isinstance(written["&"], list) \
            and len(written["&"]) == 2 and _mark_selector(written["&"][0]) == selector \
            and isinstance(written["&"][1], int):
        keep = written["&"][1]
    outside = MARK_BITS & ~assigned
    if keep is not None and not isinstance(bits, bool) and keep & outside == outside and not bits & ~assigned:
        return []
    return ["writes %s outside the bits the contract assigns it (write it as '%s set %s & 0x%08x | VALUE' with "
            "VALUE inside 0x%08x)" % (selector, selector, selector, MARK_BITS & ~assigned, assigned)]


def _log_problems(value):
    options = value if isinstance(value, dict) else {}
    extra = sorted(set(options) - set(_LOG_KEYS))
    if extra:
        return ["logs with %s, which the contract does not allow" % ", ".join(extra)]
    prefix = options.get("prefix")
    named = LOG_PREFIX_RE.match(prefix) if isinstance(prefix, str) else None
    if named is None:
        return ['logs with prefix %s, not one of the contract\'s (log_prefix(kind, rule_id))'
                % ('"%s"' % prefix if isinstance(prefix, str) else "(none)")]
    if "group" in options and options["group"] != NFLOG_GROUP[named.group("kind")]:
        return ['logs "%s" to NFLOG group %s; the contract assigns group %d to %s records' % (
            prefix, options["group"], NFLOG_GROUP[named.group("kind")], named.group("kind"))]
    return []
