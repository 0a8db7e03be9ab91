# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The policy language (DESIGN section 4): parse and validate a policy document into a ``Policy``.

Validation never stops at the first problem and never lets a Python exception escape: every problem becomes one
sentence naming the rule (by id, or by index when the id itself is broken), the field, and how to fix it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections import namedtuple

from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.common.ports import normalise_ports, parse_port

try:
    import netaddr
except ImportError:  # pragma: no cover - reported by the callers that need it
    netaddr = None

ACTIONS = ("allow", "deny", "log")
DIRECTIONS = ("ingress", "egress")
DEFAULTS = {"ingress": "deny", "egress": "allow"}
MAX_RULE_ID = 65535
SELECTOR_KEYS = ("any", "cidr", "group", "has", "hosts", "not_tags", "tags")
HOST_KEYS = ("group", "has", "hosts", "not_tags", "tags")
RULE_KEYS = ("action", "from", "id", "name", "ports", "to")
POLICY_KEYS = ("defaults", "rules")
_NAME_RE = re.compile(r"^[a-z0-9_-]+$")


class Selector(namedtuple("Selector", "tags not_tags has groups hosts cidrs any")):
    """One mapping of a selector; every key it carries must hold.

    ``tags`` and ``not_tags`` are tuples of ``(key, frozenset(values))``; ``has``, ``groups`` and ``hosts`` are
    frozensets; ``cidrs`` is a tuple of ``netaddr.IPNetwork``; ``any`` is a bool.
    """

    __slots__ = ()

    @property
    def selects_hosts(self):
        return bool(self.tags or self.not_tags or self.has or self.groups or self.hosts)

    def to_data(self):
        data = {}
        if self.tags:
            data["tags"] = {k: sorted(v) for k, v in self.tags}
        if self.not_tags:
            data["not_tags"] = {k: sorted(v) for k, v in self.not_tags}
        if self.has:
            data["has"] = sorted(self.has)
        if self.groups:
            data["group"] = sorted(self.groups)
        if self.hosts:
            data["hosts"] = sorted(self.hosts)
        if self.cidrs:
            data["cidr"] = [str(c) for c in self.cidrs]
        if self.any:
            data["any"] = True
        return data


class Rule(namedtuple("Rule", "id name sources destinations ports action")):
    """A validated policy rule. ``ports`` is None for every protocol and port."""

    __slots__ = ()

    @property
    def label(self):
        return "rule %d (%s)" % (self.id, self.name) if self.name else "rule %d" % self.id

    def to_data(self):
        data = {
            "id": self.id,
            "action": self.action,
            "from": [s.to_data() for s in self.sources],
            "to": [s.to_data() for s in self.destinations],
        }
        if self.name:
            data["name"] = self.name
        if self.ports is not None:
            data["ports"] = [str(p) for p in self.ports]
        return data


class Policy(namedtuple("Policy", "defaults rules digest")):
    """A validated policy: ``defaults`` maps direction to allow/deny, ``rules`` is sorted by id."""

    __slots__ = ()

    def rule(self, rule_id):
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


def _describe(value):
    """A short, safe rendering of a value for error messages: the value itself if scalar, else its kind."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list"}.get(type(value), "a value of type %s" % type(value).__name__)


def _suggest(key, choices):
    close = difflib.get_close_matches(str(key), choices, n=1)
    return " (did you mean '%s'?)" % close[0] if close else ""


def _unknown_keys(problems, where, data, allowed):
    for key in sorted(data, key=str):
        if key not in allowed:
            problems.append("%s: unknown key '%s'%s; allowed keys are %s" % (
                where, key, _suggest(key, allowed), ", ".join(allowed)))


def _as_list(value):
    return value if isinstance(value, list) else [value]


def tag_value(value):
    """Normalise a tag value from YAML (strings, integers) to the string the engine compares; None if invalid."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


def tag_pairs(problems, where, data):
    """``(label, frozenset(values))`` for every label of a mapping of labels (a selector's or a host's); one
    problem for every label or value that is not usable."""
    pairs = []
    for key in sorted(data, key=str):
        if not isinstance(key, str) or not key:
            problems.append("%s: label %s is not a non-empty string" % (where, _describe(key)))
            continue
        values = []
        for item in _as_list(data[key]):
            text = tag_value(item)
            if text is None:
                problems.append("%s.%s: value %s is not a string or number; write e.g. %s: web" % (
                    where, key, _describe(item), key))
            else:
                values.append(text)
        pairs.append((key, frozenset(values)))
    return pairs


def _parse_tag_map(problems, where, data):
    if not isinstance(data, dict) or not data:
        problems.append("%s: expected a non-empty mapping of label to value or list of values, "
                        "e.g. {role: web, env: [prod, stage]}; got %s" % (where, _describe(data)))
        return ()
    empty = sorted(k for k, v in data.items() if isinstance(k, str) and k and isinstance(v, list) and not v)
    for key in empty:
        problems.append("%s.%s: empty list of values; give at least one value" % (where, key))
    rest = dict((k, v) for k, v in data.items() if k not in empty)
    return tuple((key, values) for key, values in tag_pairs(problems, where, rest) if values)


def _parse_names(problems, where, data, what):
    if isinstance(data, list) and not data:
        problems.append("%s: empty list; give at least one %s" % (where, what))
        return frozenset()
    names = []
    for item in _as_list(data):
        if isinstance(item, str) and item:
            names.append(item)
        else:
            problems.append("%s: %s is not a %s name (a non-empty string)" % (where, _describe(item), what))
    return frozenset(names)


def parse_network(text):
    """Parse an address or prefix strictly; returns (IPNetwork, None) or (None, reason)."""
    if not isinstance(text, str) or not text.strip():
        return None, "is not an address or prefix; write e.g. 10.20.0.0/16 or 2001:db8::/32"
    text = text.strip()
    try:
        net = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None, "is not a valid IPv4 or IPv6 address or prefix; write e.g. 10.20.0.0/16 or 2001:db8::/32"
    if "/" in text and net.ip != net.network:
        return None, "has host bits set; write %s, or %s/%d for the single address" % (
            net.cidr, net.ip, net.ip.version == 4 and 32 or 128)
    return net.cidr, None


def _parse_items(problems, where, data, parse, fix_empty):
    """Parse a list (or one item) with ``parse`` (item -> (value, None) or (None, reason)): the values, a problem
    per bad item; None for an empty list, which is a problem that says ``fix_empty``."""
    if isinstance(data, list) and not data:
        problems.append("%s: empty list; %s" % (where, fix_empty))
        return None
    values = []
    for index, item in enumerate(_as_list(data)):
        value, reason = parse(item)
        if value is None:
            problems.append("%s[%d]: %s %s" % (where, index, _describe(item), reason))
        else:
            values.append(value)
    return values


def _parse_cidrs(problems, where, data, fix_empty="give at least one prefix such as 10.0.0.0/8"):
    """A list of addresses or prefixes (or one): a sorted tuple of distinct IPNetworks, a problem per bad item."""
    nets = _parse_items(problems, where, data, parse_network, fix_empty) or ()
    return tuple(sorted(set(nets), key=lambda n: (n.version, n.first, n.prefixlen)))


def _parse_mapping(problems, where, data):
    if not isinstance(data, dict):
        problems.append("%s: expected a mapping such as {tags: {role: web}}; got %s" % (where, _describe(data)))
        return None
    if not data:
        problems.append("%s: empty selector selects nothing; use {any: true} for every address" % where)
        return None
    _unknown_keys(problems, where, data, SELECTOR_KEYS)
    tags = _parse_tag_map(problems, where + ".tags", data["tags"]) if "tags" in data else ()
    not_tags = _parse_tag_map(problems, where + ".not_tags", data["not_tags"]) if "not_tags" in data else ()
    has = _parse_names(problems, where + ".has", data["has"], "label") if "has" in data else frozenset()
    groups = _parse_names(problems, where + ".group", data["group"], "group") if "group" in data else frozenset()
    hosts = _parse_names(problems, where + ".hosts", data["hosts"], "host") if "hosts" in data else frozenset()
    cidrs = _parse_cidrs(problems, where + ".cidr", data["cidr"]) if "cidr" in data else ()
    any_ = False
    if "any" in data:
        if data["any"] is True:
            any_ = True
        else:
            problems.append("%s.any: must be true (got %s); remove the key instead of setting it false" % (
                where, _describe(data["any"])))
    host_keys = [k for k in HOST_KEYS if k in data]
    if "cidr" in data and host_keys:
        problems.append("%s: cidr cannot be combined with %s in one mapping; use a list of mappings, "
                        "e.g. [{%s: ...}, {cidr: [...]}]" % (where, ", ".join(host_keys), host_keys[0]))
    if "any" in data and (host_keys or "cidr" in data):
        problems.append("%s: any cannot be combined with other keys; any: true already selects every address"
                        % where)
    return Selector(tags, not_tags, has, groups, hosts, cidrs, any_)


def _parse_selector(problems, where, data):
    if data is None:
        problems.append("%s: missing; give a selector such as {tags: {role: web}} or {any: true}" % where)
        return ()
    if isinstance(data, list):
        if not data:
            problems.append("%s: empty list selects nothing; give at least one mapping" % where)
            return ()
        parsed = [_parse_mapping(problems, "%s[%d]" % (where, i), item) for i, item in enumerate(data)]
    else:
        parsed = [_parse_mapping(problems, where, data)]
    return tuple(s for s in parsed if s is not None)


def _parse_ports(problems, where, data):
    specs = _parse_items(problems, where, data, parse_port, "omit ports to match every protocol and port")
    return None if specs is None else normalise_ports(specs)


def _rule_where(index, raw):
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool) and 1 <= rid <= MAX_RULE_ID:
            name = raw.get("name")
            if isinstance(name, str) and _NAME_RE.match(name):
                return "rule %d (%s)" % (rid, name)
            return "rule %d" % rid
    return "rules[%d]" % index


def _parse_rule(problems, index, raw):
    where = _rule_where(index, raw)
    if not isinstance(raw, dict):
        problems.append("%s: expected a mapping with id, from, to (and optionally name, ports, action); got %s"
                        % (where, _describe(raw)))
        return None
    before = len(problems)
    _unknown_keys(problems, where, raw, RULE_KEYS)
    rid = raw.get("id")
    if "id" not in raw:
        problems.append("%s: id: missing; every rule needs a unique integer id from 1 to %d" % (where, MAX_RULE_ID))
    elif isinstance(rid, bool) or not isinstance(rid, int) or not 1 <= rid <= MAX_RULE_ID:
        problems.append("%s: id: %s is not an integer from 1 to %d" % (where, _describe(rid), MAX_RULE_ID))
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
        problems.append("%s: name: %s may only contain a-z, 0-9, '_' and '-'" % (where, _describe(name)))
    action = raw.get("action", "allow")
    if action not in ACTIONS:
        problems.append("%s: action: %s is not one of %s" % (where, _describe(action), ", ".join(ACTIONS)))
    sources = _parse_selector(problems, where + ": from", raw.get("from"))
    destinations = _parse_selector(problems, where + ": to", raw.get("to"))
    ports = _parse_ports(problems, where + ": ports", raw["ports"]) if "ports" in raw else None
    if len(problems) != before:
        return None
    return Rule(rid, name, sources, destinations, ports, action)


def _digest(defaults, rules):
    canonical = json.dumps({"defaults": defaults, "rules": [r.to_data() for r in rules]},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_policy(document):
    """Validate a policy document and return a ``Policy``; raise ``MsegError`` listing every problem."""
    if netaddr is None:
        raise MsegError("the Python library netaddr is required on the control node: pip install netaddr")
    if document is None:
        raise MsegError("mseg_policy is not set; define it (usually in group_vars/all) with defaults and rules")
    if not isinstance(document, dict):
        raise MsegError("mseg_policy: expected a mapping with the keys defaults and rules; got %s"
                        % _describe(document))
    problems = []
    _unknown_keys(problems, "mseg_policy", document, POLICY_KEYS)
    defaults = dict(DEFAULTS)
    raw_defaults = document.get("defaults", {})
    if raw_defaults is None:
        raw_defaults = {}
    if not isinstance(raw_defaults, dict):
        problems.append("mseg_policy.defaults: expected a mapping such as {ingress: deny, egress: allow}; got %s"
                        % _describe(raw_defaults))
    else:
        _unknown_keys(problems, "mseg_policy.defaults", raw_defaults, DIRECTIONS)
        for direction in DIRECTIONS:
            if direction in raw_defaults:
                value = raw_defaults[direction]
                if value not in ("allow", "deny"):
                    problems.append("mseg_policy.defaults.%s: %s is not allow or deny" % (direction, _describe(value)))
                else:
                    defaults[direction] = value
    raw_rules = document.get("rules", [])
    if raw_rules is None:
        raw_rules = []
    if not isinstance(raw_rules, list):
        problems.append("mseg_policy.rules: expected a list of rules; got %s" % _describe(raw_rules))
        raw_rules = []
    rules = []
    first_index = {}
    for index, raw in enumerate(raw_rules):
        rid = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(rid, int) and not isinstance(rid, bool):
            if rid in first_index:
                problems.append("rule %d: id: used by rules[%d] and rules[%d]; rule ids must be unique"
                                % (rid, first_index[rid], index))
            else:
                first_index[rid] = index
        rule = _parse_rule(problems, index, raw)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise MsegError(problems)
    rules.sort(key=lambda r: r.id)
    return Policy(defaults, tuple(rules), _digest(defaults, rules))
