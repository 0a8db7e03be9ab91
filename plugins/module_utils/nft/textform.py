# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The text the renderer writes, read into the JSON objects nft lists for it, without nft: no scratch parse.

``objects(text, protocols)`` reads a transaction of the renderer's grammar (``render/nftables.py``, ``nft/model.py``
and ``apply/peers.build_transaction``): comment lines, ``table inet mseg {}``, ``delete table inet mseg``, one table
block (counters; sets and verdict maps with their elements; chains and their rules), ``add element`` lines for the
auto management sets. It returns the objects ``nft -j list table inet mseg`` prints after nft loaded that text
(the form ``jsonform.parse`` returns, without the canaries), so ``jsonform.check(objects, scratch=False)`` judges them
by the same contract and ``jsonform.transaction`` loads them with one ``nft -j -f``. ``oracle`` tests compare the
two loads, listing against listing, for real rendered rulesets.

It reads only what it reads exactly as nft does, and returns None for anything else: then the caller has nft parse
the text in a scratch namespace as before (``jsonform.parse``). Never a guess: every line must be one of the shapes
below, token for token, single-spaced, printable ASCII without a backslash, newlines only ``\\n``; every name used
must be declared (a counter, a set of the right type, a chain) and be one of the contract's; a quoted string is
short and holds no quote, backslash, ``#``, ``$`` or ``;``. Among what it leaves to nft on purpose:

* any statement, keyword or flag the renderer does not write: ``reject``, ``log level``, ``th dport``, ``ct mark``,
  ``meta mark``, anonymous counters, ``goto``, ``return``, set ``size``/``timeout``/``policy``/``auto-merge``,
  a set declared ``dynamic`` that no rule adds to, ``define``, ``include``, ``flush``, another table;
* anonymous sets of addresses or prefixes (``ip daddr { a, b }``: a hash set nft lists in the kernel's order), an
  inline prefix, anonymous port or protocol sets with one member or with members that touch (nft merges them);
* set elements out of order, overlapping, or spelled otherwise than nft prints them (``/32``, ``::ffff:1.2.3.4``);
* a rule that also spells out a dependency nft adds itself and then hides (``meta l4proto 6 tcp dport 22``);
* the listings a backup holds (``state: previous``): ``size 65535``, ``elements`` of dynamic sets;
* a protocol number whose name this host's protocol database cannot give the way nft looks it up.

nft's JSON listing differs between releases (flags, dynamic sets), so ``LISTED_BY`` names the nft releases whose
listing this module writes, each proven by ``tests/integration/test_nft_textform_oracle.py``; the runner uses the
translation only with one of them (``runner.Nft``).

Cost: one pass over the lines and one over each set's elements (an integer per element for the order check),
linear in the text's size; no process runs.
"""

from __future__ import annotations

import functools
import operator
import re
import socket
import struct

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract

# nft releases whose ``-j list`` form the objects below are: the oracle test proves each before it is added here.
LISTED_BY = ("1.0.6",)
PROTOCOLS_FILE = "/etc/protocols"

_FAMILY, _NAME = contract.TABLE_FAMILY, contract.TABLE_NAME
_TABLE = contract.TABLE
_PRINTABLE_RE = re.compile(r"[^\t\n -\[\]-~]")  # printable ASCII but the backslash, tab, newline
_TOKEN_RE = re.compile(r'"[^"]*"|\S+')
_STRING_RE = re.compile(r'^"([A-Za-z0-9 =\[\]().,_:-]{1,127})"$')
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_NUMBER_RE = re.compile(r"^(?:0|[1-9][0-9]{0,9})$")
_RANGE_RE = re.compile(r"^(0|[1-9][0-9]{0,9})-(0|[1-9][0-9]{0,9})$")
_RATE_RE = re.compile(r"^([1-9][0-9]{0,8})/second$")
_ICMPV6_TYPES = {"nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135,
                 "nd-neighbor-advert": 136}
_CT_STATES = ("invalid", "new")
_ADDR_TYPE = {"ipv4_addr": 4, "ipv6_addr": 6}
_VERSION_OF = {"ip": 4, "ip6": 6}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_PTON4 = functools.partial(socket.inet_pton, socket.AF_INET)
_BITS = {4: 32, 6: 128}
_BASE_LINE_RE = re.compile(r"^type filter hook (input|output|forward) priority filter; policy (accept|drop);$")
_DYNAMIC_SIZE = 65535  # what nft gives a set a rule adds to when the text names no size, and lists


class NotMine(Exception):
    """The text holds something this module does not read exactly as nft would: nft must parse it."""


def objects(text, protocols=None):
    """The ``nft -j list`` objects of the table ``text`` leaves (empty: it leaves none), or None when ``text`` is
    not in the renderer's grammar. ``protocols``: number -> name as nft prints it (``protocol_names``); without it
    a rule naming an IP protocol is not translated."""
    try:
        return _Reader(protocols).read(text)
    except NotMine:
        return None


def nft_release(version_output):
    """The release in ``nft --version``'s output ("nftables v1.0.6 (Lester Gooch #5)" -> "1.0.6"), or None."""
    found = re.match(r"^nftables v([0-9][0-9.]*)(?: |$)", version_output.strip())
    return found.group(1) if found else None


def protocol_names(path=PROTOCOLS_FILE):
    """number -> name as the protocol database's file gives it (the first entry with that number, as glibc's
    getprotobynumber reads it, which nft prints); None when the file is missing or unreadable (nft's lookup could
    then find another source). The reader uses a name only once the resolver agrees (``_protocol``)."""
    names = {}
    try:
        with open(path, encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and _NUMBER_RE.match(fields[1]) and int(fields[1]) <= 255:
            names.setdefault(int(fields[1]), fields[0])
    return names


def _protocol(protocols, number):
    """The name nft prints for IP protocol ``number``: the file's, once ``getprotobyname`` maps it back to the
    number (else the host resolves protocols otherwise: NotMine). A number the file lacks is NotMine too."""
    name = protocols.get(number)
    if name is None:
        raise NotMine("protocol %d" % number)
    try:
        agrees = socket.getprotobyname(name) == number
    except OSError:
        agrees = False
    if not agrees:
        raise NotMine("protocol %d" % number)
    return name


def _string(token):
    found = _STRING_RE.match(token)
    if not found:
        raise NotMine(token)
    return found.group(1)


def _name(token, kind=None):
    """An identifier; with ``kind`` (chain, set, counter), one of the contract's names of that kind: nft reads
    those as plain names, and anything else is left to nft and the contract to refuse in their own words."""
    if not _NAME_RE.match(token) or (kind is not None and not contract.NAMES[kind].match(token)):
        raise NotMine(token)
    return token


def _number(token, low, high):
    if not _NUMBER_RE.match(token) or not low <= int(token) <= high:
        raise NotMine(token)
    return int(token)


def _address(text, version):
    """``(integer, text)`` for an address spelled exactly as nft prints it (inet_ntop), else NotMine."""
    try:
        packed = socket.inet_pton(_AF[version], text)
    except (OSError, ValueError):
        raise NotMine(text)
    if version == 6 and socket.inet_ntop(socket.AF_INET6, packed) != text:
        raise NotMine(text)
    if version == 4:
        return struct.unpack("!I", packed)[0]
    high, low = struct.unpack("!QQ", packed)
    return high << 64 | low


def _interval(item, version):
    """``(first, last, json)`` for a set element: an address, or a prefix of 1 to bits-1 with no host bits."""
    if "/" not in item:
        value = _address(item, version)
        return value, value, item
    addr, length = item.split("/", 1)
    bits = _BITS[version]
    length = _number(length, 1, bits - 1)
    value = _address(addr, version)
    span = (1 << (bits - length)) - 1
    if value & span:
        raise NotMine(item)
    return value, value | span, {"prefix": {"addr": addr, "len": length}}


def _elements_of(inside, version, verdicts):
    """The elements of an interval set (or, with ``verdicts``, a verdict map: ``key : jump chain``), in nft's
    listing order: they must already be in it (ascending, no overlap). Returns (elements, jump targets)."""
    if version == 4 and not verdicts and "/" not in inside:  # IPv4 addresses only, the bulk: one C call each
        items = inside.split(", ")  # the renderer's separator; any other spacing fails inet_pton below
        try:
            values = struct.unpack("!%dI" % len(items), b"".join(map(_PTON4, items)))
        except (OSError, ValueError):
            raise NotMine("an IPv4 address spelled otherwise than nft prints it")
        if not all(map(operator.lt, values, values[1:])):
            raise NotMine("elements out of nft's order")
        return items, set()
    found = []
    targets = set()
    previous = -1
    for item in inside.split(","):
        item = item.strip()
        if verdicts:
            key, separator, verdict = item.partition(" : ")
            words = verdict.split(" ")
            if not separator or len(words) != 2 or words[0] != "jump":
                raise NotMine(item)
            target = _name(words[1], "chain")
            targets.add(target)
            item = key
        first, last, element = _interval(item, version)
        if first <= previous:
            raise NotMine(item)
        previous = last
        found.append([element, {"jump": {"target": target}}] if verdicts else element)
    return found, targets


def _anonymous(tokens, at):
    """The members of ``{ a, b }`` starting at ``tokens[at]`` == "{"; returns (members, index after "}")."""
    members = []
    at += 1
    while at < len(tokens):
        token = tokens[at]
        if token.endswith(","):
            members.append(token[:-1])
        elif at + 1 < len(tokens) and tokens[at + 1] == "}":
            members.append(token)
            if len(members) < 2 or any(not member or member in "{}" for member in members):
                raise NotMine("{")
            return members, at + 2
        else:
            raise NotMine(token)
        at += 1
    raise NotMine("{")


def _numeric(member, high, name=None):
    """``(first, last, json)`` of a port or protocol member: N, or a range N-M (N < M)."""
    ranged = _RANGE_RE.match(member)
    if ranged:
        first, last = int(ranged.group(1)), int(ranged.group(2))
        if not first < last <= high:
            raise NotMine(member)
        return first, last, {"range": [first, last]}
    value = _number(member, 0, high)
    return value, value, name(value) if name else value


def _numeric_value(tokens, at, high, name=None):
    """A port or protocol: one value, a range, or an anonymous set of them whose members do not touch (nft lists
    such a set in ascending order); returns (json, index after it)."""
    if tokens[at] != "{":
        return _numeric(tokens[at], high, name)[2], at + 1
    members, after = _anonymous(tokens, at)
    parsed = [_numeric(member, high, name) for member in members]
    for left, right in zip(parsed, parsed[1:]):
        if right[0] <= left[1] + 1:  # out of order, overlapping or adjacent (merged): nft's business
            raise NotMine(members)
    return {"set": [element for _first, _last, element in parsed]}, after


def _match(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol, field):
    return {"payload": {"protocol": protocol, "field": field}}


class _Reader(object):
    """One pass over a transaction; holds the table it builds."""

    def __init__(self, protocols):
        self.protocols = protocols
        self._clear()

    def _clear(self):
        """No table: the state before the text, and after ``delete table inet mseg``."""
        self.present = False
        self.filled = False
        self.counters = []
        self.sets = {}       # name -> JSON body (sets and maps share the names)
        self.set_order = []
        self.chains = {}     # name -> JSON body
        self.rules = {}      # chain name -> [rule bodies]
        self.jumps = set()   # chains jumped to, from rules and map elements
        self.added = set()   # dynamic sets a rule adds to

    # -- the transaction ------------------------------------------------------------------------------------

    def read(self, text):
        if _PRINTABLE_RE.search(text):
            raise NotMine("a character other than printable ASCII (no backslash), tab or newline")
        lines = text.split("\n")
        at = 0
        while at < len(lines):
            line = lines[at]
            at += 1
            if not line.strip() or line.startswith("#"):
                continue
            if line == "table %s {}" % _TABLE:
                self.present = True
            elif line == "delete table %s" % _TABLE:
                if not self.present:
                    raise NotMine(line)
                self._clear()
            elif line == "table %s {" % _TABLE:
                if self.filled:
                    raise NotMine(line)
                self.present = self.filled = True
                at = self._table(lines, at)
            elif line.startswith("add element %s " % _TABLE):
                self._add_element(line[len("add element %s " % _TABLE):])
            else:
                raise NotMine(line)
        return self._result()

    def _result(self):
        if not self.present:
            return []
        for target in self.jumps:
            if target not in self.chains or "hook" in self.chains[target]:
                raise NotMine(target)
        for name, body in self.sets.items():
            if body.get("size") == _DYNAMIC_SIZE and name not in self.added:
                raise NotMine(name)
        found = [{"table": {"family": _FAMILY, "name": _NAME}}]
        found.extend({"counter": {"family": _FAMILY, "name": name, "table": _NAME}} for name in self.counters)
        found.extend({self.sets[name].pop("_kind"): self.sets[name]} for name in self.set_order)
        found.extend({"chain": body} for body in self.chains.values())
        for name in self.chains:
            found.extend({"rule": body} for body in self.rules[name])
        return found

    def _table(self, lines, at):
        """The table block from ``lines[at]`` to its closing brace; returns the index after it."""
        while at < len(lines):
            line = lines[at].strip()
            at += 1
            if line == "}":
                return at
            words = line.split(" ")
            if len(words) != 3 or words[2] != "{" or words[0] not in ("counter", "set", "map", "chain"):
                raise NotMine(line)
            name = _name(words[1], "set" if words[0] == "map" else words[0])
            if words[0] == "counter":
                if name in self.counters or at >= len(lines) or lines[at].strip() != "}":
                    raise NotMine(line)
                self.counters.append(name)
                at += 1
            elif words[0] == "chain":
                at = self._chain(name, lines, at)
            else:
                at = self._set(words[0], name, lines, at)
        raise NotMine("table block without its closing brace")

    def _set(self, kind, name, lines, at):
        if name in self.sets:
            raise NotMine(name)
        body = {"family": _FAMILY, "name": name, "table": _NAME}
        lines_of = []
        while at < len(lines) and lines[at].strip() != "}":
            lines_of.append(lines[at].strip())
            at += 1
        if at >= len(lines) or not lines_of or not lines_of[0].startswith("type "):
            raise NotMine(name)
        key = lines_of.pop(0)[len("type "):]
        if kind == "map":
            key, separator, value = key.partition(" : ")
            if separator != " : " or value != "verdict" or key not in _ADDR_TYPE:
                raise NotMine(key)
            body.update(type=key, map="verdict")
        elif key in _ADDR_TYPE:
            body["type"] = key
        else:
            parts = key.split(" . ")
            if len(parts) != 2 or parts[0] not in _ADDR_TYPE or parts[1] != "inet_service":
                raise NotMine(key)
            body["type"] = parts
        flags = None
        if lines_of and lines_of[0].startswith("flags "):
            flags = lines_of.pop(0)[len("flags "):]
        concat = isinstance(body["type"], list)
        if flags == "interval" and not concat:
            body["flags"] = ["interval"]
        elif flags == "dynamic" and kind == "set" and not concat:
            body["size"] = _DYNAMIC_SIZE  # nft's listing names no flag for it
        elif flags is not None or not concat:
            raise NotMine(name)
        if lines_of:
            if "flags" not in body:  # elements of a hash or dynamic set: listed in the kernel's order
                raise NotMine(name)
            joined = " ".join(lines_of)
            if not joined.startswith("elements = { ") or not joined.endswith(" }") or "{" in joined[13:-2] \
                    or "}" in joined[13:-2]:
                raise NotMine(name)
            elements, targets = _elements_of(joined[13:-2], _ADDR_TYPE[body["type"]], kind == "map")
            self.jumps.update(targets)
            body["elem"] = elements
        body["_kind"] = kind
        self.sets[name] = body
        self.set_order.append(name)
        return at + 1

    def _chain(self, name, lines, at):
        if name in self.chains:
            raise NotMine(name)
        body = {"family": _FAMILY, "table": _NAME, "name": name}
        self.chains[name] = body
        self.rules[name] = []
        first = True
        while at < len(lines):
            line = lines[at].strip()
            at += 1
            if line == "}":
                return at
            base = _BASE_LINE_RE.match(line)
            if base and first:
                body.update(type="filter", hook=base.group(1), prio=0, policy=base.group(2))
            else:
                self.rules[name].append(self._rule(name, line, "hook" in body))
            first = False
        raise NotMine("chain %s without its closing brace" % name)

    def _add_element(self, rest):
        """``NAME { ADDRESS . PORT }``: one element of an auto management set (an address . port set)."""
        words = rest.split(" ")
        if len(words) != 6 or words[1] != "{" or words[3] != "." or words[5] != "}":
            raise NotMine(rest)
        body = self.sets.get(words[0])
        if body is None or not isinstance(body["type"], list):
            raise NotMine(rest)
        _address(words[2], _ADDR_TYPE[body["type"][0]])
        element = {"concat": [words[2], _number(words[4], 0, 65535)]}
        if element in body.setdefault("elem", []):
            raise NotMine(rest)
        body["elem"].append(element)

    # -- a rule -----------------------------------------------------------------------------------------------

    def _rule(self, chain, line, base):
        tokens = _TOKEN_RE.findall(line)
        if " ".join(tokens) != line or not tokens:
            raise NotMine(line)
        rule = {"family": _FAMILY, "table": _NAME, "chain": chain}
        expr = []
        seen = set()  # what the rule matches on, to refuse the combinations nft rewrites when it lists them
        at = 0
        done = False
        while at < len(tokens):
            token = tokens[at]
            if token == "comment" and at + 2 == len(tokens):
                rule["comment"] = _string(tokens[at + 1])
                break
            if done:
                raise NotMine(line)
            step = _RULE_WORDS.get(token)
            if step is None:
                raise NotMine(token)
            at, statement, verdict = step(self, tokens, at, seen)
            expr.append(statement)
            if verdict:
                if not base and token != "accept" and token != "drop":
                    raise NotMine(line)  # only a base chain jumps: no loop nft would have to refuse
                done = True
        if not expr or len(seen & {"ip", "ip6", "nfproto"}) > 1 or len(seen & {"tcp", "udp", "icmpv6", "l4proto"}) > 1 \
                or ("icmpv6" in seen and ("ip" in seen or "nfproto" in seen)):
            raise NotMine(line)
        rule["expr"] = expr
        return rule

    @staticmethod
    def _word(tokens, at, count):
        if at + count > len(tokens):
            raise NotMine(" ".join(tokens))
        return tokens[at:at + count]

    def _ct(self, tokens, at, seen):
        _ct, key, value = self._word(tokens, at, 3)
        if key != "state" or "ct" in seen:
            raise NotMine(key)
        seen.add("ct")
        if value == "established,related":
            right = ["established", "related"]
        elif value in _CT_STATES:
            right = value
        else:
            raise NotMine(value)
        return at + 3, _match({"ct": {"key": "state"}}, right, "in"), False

    def _interface(self, tokens, at, seen):
        key, value = self._word(tokens, at, 2)
        if value != '"lo"':
            raise NotMine(value)
        return at + 2, _match({"meta": {"key": key}}, "lo"), False

    def _icmpv6(self, tokens, at, seen):
        _proto, field = self._word(tokens, at, 2)
        if field != "type" or at + 2 >= len(tokens):
            raise NotMine(field)
        seen.add("icmpv6")
        if tokens[at + 2] != "{":
            if tokens[at + 2] not in _ICMPV6_TYPES:
                raise NotMine(tokens[at + 2])
            return at + 3, _match(_payload("icmpv6", "type"), tokens[at + 2]), False
        members, after = _anonymous(tokens, at + 2)
        values = [_ICMPV6_TYPES.get(member, -1) for member in members]
        if -1 in values or values != sorted(set(values)):
            raise NotMine(members)
        return after, _match(_payload("icmpv6", "type"), {"set": members}), False

    def _meta(self, tokens, at, seen):
        _meta, key = self._word(tokens, at, 2)
        if at + 2 >= len(tokens):
            raise NotMine(key)
        if key == "nfproto":
            value = tokens[at + 2]
            if value not in ("ipv4", "ipv6"):
                raise NotMine(value)
            seen.add("nfproto")
            return at + 3, _match({"meta": {"key": "nfproto"}}, value), False
        if key != "l4proto" or self.protocols is None:
            raise NotMine(key)
        seen.add("l4proto")
        right, after = _numeric_value(tokens, at + 2, 255, lambda number: _protocol(self.protocols, number))
        return after, _match({"meta": {"key": "l4proto"}}, right), False

    def _port(self, tokens, at, seen):
        proto, field = self._word(tokens, at, 2)
        if field != "dport" or at + 2 >= len(tokens):
            raise NotMine(field)
        seen.add(proto)
        right, after = _numeric_value(tokens, at + 2, 65535)
        return after, _match(_payload(proto, "dport"), right), False

    def _ip(self, tokens, at, seen):
        proto, field = self._word(tokens, at, 2)
        version = _VERSION_OF[proto]
        if field not in ("saddr", "daddr") or at + 2 >= len(tokens):
            raise NotMine(field)
        seen.add(proto)
        left = _payload(proto, field)
        following = tokens[at + 2]
        if following == ".":
            l4, port, reference = self._word(tokens, at + 3, 3)
            if l4 not in ("tcp", "udp") or port != "dport":
                raise NotMine(l4)
            seen.add(l4)
            self._uses(reference, [_ADDR_TYPE_NAME[version], "inet_service"], None)
            return at + 6, _match({"concat": [left, _payload(l4, "dport")]}, reference), False
        if following == "vmap":
            reference = self._word(tokens, at + 3, 1)[0]
            self._uses(reference, _ADDR_TYPE_NAME[version], "map")
            return at + 4, {"vmap": {"key": left, "data": reference}}, True
        if following.startswith("@"):
            self._uses(following, _ADDR_TYPE_NAME[version], "set")
            return at + 3, _match(left, following), False
        _address(following, version)
        return at + 3, _match(left, following), False

    def _uses(self, reference, key, kind):
        """A rule looks ``reference`` (``@name``) up: a declared interval set (or map) of type ``key``, or (kind
        None) an address . port set."""
        body = self.sets.get(reference[1:]) if reference.startswith("@") else None
        if body is None or body["type"] != key or (kind is not None and (
                body["_kind"] != kind or body.get("flags") != ["interval"])):
            raise NotMine(reference)

    def _counter(self, tokens, at, seen):
        _counter, keyword, name = self._word(tokens, at, 3)
        name = _string(name) if keyword == "name" else None
        if name not in self.counters:  # declared, so a contract name
            raise NotMine(keyword)
        return at + 3, {"counter": name}, False

    def _limit(self, tokens, at, seen):
        words = self._word(tokens, at, 6)
        rate = _RATE_RE.match(words[2])
        if words[1] != "rate" or not rate or words[3] != "burst" or words[5] != "packets":
            raise NotMine(" ".join(words))
        burst = _number(words[4], 1, 10 ** 9)
        if burst == 5:  # nft's default burst, which its listing leaves out
            raise NotMine(words[4])
        return at + 6, {"limit": {"rate": int(rate.group(1)), "burst": burst, "per": "second"}}, False

    def _log(self, tokens, at, seen):
        words = self._word(tokens, at, 3)
        if words[1] == "prefix":
            return at + 3, {"log": {"prefix": _string(words[2])}}, False
        words = self._word(tokens, at, 5)
        if words[1] != "group" or words[3] != "prefix":
            raise NotMine(words[1])
        return at + 5, {"log": {"prefix": _string(words[4]), "group": _number(words[2], 0, 65535)}}, False

    def _add(self, tokens, at, seen):
        """``add @SET { ip saddr ct count over N }``: the one set update the renderer writes (a connection limit)."""
        words = self._word(tokens, at, 10)
        reference, proto = words[1], words[3]
        body = self.sets.get(reference[1:]) if reference.startswith("@") else None
        if body is None or body.get("size") != _DYNAMIC_SIZE or proto not in _VERSION_OF \
                or body["type"] != _ADDR_TYPE_NAME[_VERSION_OF[proto]] \
                or [words[2]] + words[4:8] + [words[9]] != ["{", "saddr", "ct", "count", "over", "}"]:
            raise NotMine(" ".join(words))
        seen.add(proto)
        self.added.add(reference[1:])
        count = _number(words[8], 1, 2 ** 32 - 1)
        return at + 10, {"set": {"op": "add", "elem": _payload(proto, "saddr"), "set": reference,
                                 "stmt": [{"ct count": {"val": count, "inv": True}}]}}, False

    def _verdict(self, tokens, at, seen):
        return at + 1, {tokens[at]: None}, True

    def _jump(self, tokens, at, seen):
        target = _name(self._word(tokens, at, 2)[1], "chain")
        self.jumps.add(target)
        return at + 2, {"jump": {"target": target}}, True


_ADDR_TYPE_NAME = {4: "ipv4_addr", 6: "ipv6_addr"}
_RULE_WORDS = {
    "ct": _Reader._ct, "iif": _Reader._interface, "oif": _Reader._interface, "icmpv6": _Reader._icmpv6,
    "meta": _Reader._meta, "tcp": _Reader._port, "udp": _Reader._port, "ip": _Reader._ip, "ip6": _Reader._ip,
    "counter": _Reader._counter, "limit": _Reader._limit, "log": _Reader._log, "add": _Reader._add,
    "accept": _Reader._verdict, "drop": _Reader._verdict, "jump": _Reader._jump,
}
