# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scope check: an ``nft -f`` text may only touch table ``inet mseg`` (DESIGN section 5)."""

from __future__ import annotations

import re

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import NftError

_OBJECTS = ("chain", "set", "map", "element", "rule", "counter", "quota", "limit", "flowtable",
            "ct", "secmark", "synproxy")
_VERBS = ("add", "create", "delete", "destroy", "flush", "insert", "replace", "reset")
_TABLE = [contract.TABLE_FAMILY, contract.TABLE_NAME]


_LEXEME = re.compile(r'"[^"\n]*"?|#[^\n]*')
_TOP = re.compile(r"[{};\n]")
_INNER = re.compile(r"[{}]")


def _blank(match):
    """Same length, no meaning: string contents become ``_``, comments spaces (positions stay valid)."""
    token = match.group(0)
    if token[0] == '"':
        return '"' + "_" * max(0, len(token) - 2) + ('"' if len(token) > 1 else "")
    return " " * len(token)


def _statements(content):
    """Yield ``(line, header, shown)`` for every top-level statement: the words before its first ``{``.

    ``header`` has string contents blanked (what the scope check judges); ``shown`` is the original
    text for messages.

    Strings and comments are blanked first; inside blocks only braces matter, so the scan skips
    element lists of any size at regular-expression speed.
    """
    text = _LEXEME.sub(_blank, content)
    counted = [0, 1]  # position up to which newlines are counted, line number there

    def line_of(position):
        counted[1] += text.count("\n", counted[0], position)
        counted[0] = position
        return counted[1]

    pos = start = 0
    while True:
        match = _TOP.search(text, pos)
        end = match.start() if match else len(text)
        segment = text[start:end]
        header = " ".join(segment.split())
        if header:
            first = line_of(start + len(segment) - len(segment.lstrip()))
            shown = " ".join(_LEXEME.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "",
                                         content[start:end]).split())
        if not match:
            if header:
                yield first, header, shown
            return
        char = match.group(0)
        if char == "}":
            raise NftError("content line %d: unbalanced '}'" % line_of(end))
        if header or char == "{":
            yield (first, header, shown) if header else (line_of(end), "", "")
        pos = end + 1
        if char == "{":
            opened = line_of(end)
            depth = 1
            while depth:
                inner = _INNER.search(text, pos)
                if not inner:
                    raise NftError("content: unbalanced '{' (the block opened on line %d is never closed)" % opened)
                depth += 1 if inner.group(0) == "{" else -1
                pos = inner.end()
        start = pos


def _in_scope(header):
    words = header.split()
    if words[:3] == ["table"] + _TABLE and len(words) == 3:
        return True
    if len(words) >= 4 and words[0] in _VERBS:
        if words[1] == "table":
            return words[2:] == _TABLE
        obj = 3 if words[1] == "ct" else 2
        if words[1] in _OBJECTS:
            return words[obj:obj + 2] == _TABLE
    return False


def check_scope(content):
    """Raise ``NftError`` unless every statement of ``content`` stays inside table ``inet mseg``."""
    bad = []
    defines = False
    for line, header, shown in _statements(content):
        if header and not _in_scope(header):
            bad.append("line %d: '%s'" % (line, shown[:80]))
        if header.split()[:3] == ["table"] + _TABLE:
            defines = True
    if bad:
        raise NftError(
            "content touches more than table %s (%s); mseg.fleet never runs 'flush ruleset' and never "
            "changes other tables: render the ruleset with mseg.fleet and keep every statement inside table "
            "%s" % (contract.TABLE, "; ".join(bad[:5]), contract.TABLE))
    if not defines:
        raise NftError("content does not define 'table %s { ... }': pass the ruleset rendered by mseg.fleet"
                       % contract.TABLE)
