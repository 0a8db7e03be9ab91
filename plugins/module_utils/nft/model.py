# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small object model of one nftables table, rendered deterministically for ``nft -f``.

Objects are declared, then rendered in a fixed order (counters and sets sorted by name, base chains in declaration
order, then regular chains sorted by name; rules in the order they were added), so the same input always gives
byte-identical text. Nothing here knows about policies.
"""

from __future__ import annotations

import re

_IDENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
ELEMENTS_PER_LINE = 4


def _check_ident(name):
    if not _IDENT_RE.match(name):
        raise ValueError("not an nftables identifier: %r" % (name,))
    return name


def quote(text):
    """A double-quoted nft string; the engine only ever quotes text it generated itself."""
    if '"' in text or "\n" in text:
        raise ValueError("cannot quote %r" % (text,))
    return '"%s"' % text


class Elements(object):
    """Set elements, immutable; their text is formatted once however many tables share them."""

    __slots__ = ("items", "_text")

    def __init__(self, items):
        self.items = tuple(items)
        self._text = {}

    def __len__(self):
        return len(self.items)

    def text(self, pad):
        if pad not in self._text:
            lines = [", ".join(self.items[i:i + ELEMENTS_PER_LINE])
                     for i in range(0, len(self.items), ELEMENTS_PER_LINE)]
            self._text[pad] = "%selements = { %s }" % (pad, (",\n%s\t     " % pad).join(lines))
        return self._text[pad]


class Set(object):
    """A named set: ``type`` such as ``ipv4_addr`` or ``ipv4_addr . inet_service``; ``flags`` such as interval."""

    keyword = "set"

    def __init__(self, name, type_, flags=(), elements=()):
        self.name = _check_ident(name)
        self.type = type_
        self.flags = tuple(flags)
        self.elements = elements if isinstance(elements, Elements) else Elements(elements)

    def render(self, out, indent):
        pad = indent + "\t"
        out.append("%s%s %s {" % (indent, self.keyword, self.name))
        out.append("%stype %s" % (pad, self.type))
        if self.flags:
            out.append("%sflags %s" % (pad, ",".join(self.flags)))
        if self.elements:
            out.append(self.elements.text(pad))
        out.append("%s}" % indent)


class Map(Set):
    """A named map: ``type`` such as ``ipv4_addr : verdict``, elements ``key : value``; shares the sets' names."""

    keyword = "map"


class Counter(object):
    """A named counter object, shared by every rule that names it."""

    def __init__(self, name):
        self.name = _check_ident(name)

    def render(self, out, indent):
        out.append("%scounter %s {" % (indent, self.name))
        out.append("%s}" % indent)


class Rule(object):
    """One rule: the statement text and an optional comment."""

    __slots__ = ("statement", "comment")

    def __init__(self, statement, comment=None):
        self.statement = statement
        self.comment = comment

    def render(self):
        if self.comment:
            return "%s comment %s" % (self.statement, quote(self.comment))
        return self.statement


class Chain(object):
    """A chain; a base chain has a type, hook, priority and policy."""

    def __init__(self, name, type_=None, hook=None, priority="filter", policy="accept"):
        self.name = _check_ident(name)
        self.type = type_
        self.hook = hook
        self.priority = priority
        self.policy = policy
        self.rules = []

    @property
    def is_base(self):
        return self.hook is not None

    def add(self, statement, comment=None):
        self.rules.append(Rule(statement, comment))
        return self

    def render(self, out, indent):
        pad = indent + "\t"
        out.append("%schain %s {" % (indent, self.name))
        if self.is_base:
            out.append("%stype %s hook %s priority %s; policy %s;" % (
                pad, self.type, self.hook, self.priority, self.policy))
        for rule in self.rules:
            out.append(pad + rule.render())
        out.append("%s}" % indent)


class Table(object):
    """One table with its counters, sets and chains."""

    def __init__(self, family, name):
        self.family = family
        self.name = _check_ident(name)
        self.counters = {}
        self.sets = {}
        self.chains = []

    def counter(self, name):
        if name not in self.counters:
            self.counters[name] = Counter(name)
        return self.counters[name]

    def add_set(self, set_):
        """Declare a set or a map (one namespace in nftables)."""
        if set_.name in self.sets:
            raise ValueError("set %s declared twice" % set_.name)
        self.sets[set_.name] = set_
        return set_

    def chain(self, name, **base):
        for chain in self.chains:
            if chain.name == name:
                return chain
        chain = Chain(name, **base)
        self.chains.append(chain)
        return chain

    def stats(self):
        """Counts that describe the table: rules, sets, set elements, counters."""
        return {
            "rules": sum(len(c.rules) for c in self.chains),
            "chains": len(self.chains),
            "sets": len(self.sets),
            "elements": sum(len(s.elements) for s in self.sets.values()),
            "counters": len(self.counters),
        }

    def render(self):
        out = ["table %s %s {" % (self.family, self.name)]
        for name in sorted(self.counters):
            self.counters[name].render(out, "\t")
        for name in sorted(self.sets):
            self.sets[name].render(out, "\t")
        base = [c for c in self.chains if c.is_base]
        regular = sorted((c for c in self.chains if not c.is_base), key=lambda c: c.name)
        for chain in base + regular:
            chain.render(out, "\t")
        out.append("}")
        return "\n".join(out) + "\n"


def replace_script(table, header=()):
    """A complete ``nft -f`` file that atomically replaces ``table`` and nothing else.

    ``table X {}`` makes sure the table exists so that ``delete table X`` cannot fail; the new table follows in the
    same transaction, so the old or the new table is live, never a mixture and never none.
    """
    lines = ["# " + h for h in header]
    lines.append("table %s %s {}" % (table.family, table.name))
    lines.append("delete table %s %s" % (table.family, table.name))
    return "\n".join(lines) + "\n" + table.render()
