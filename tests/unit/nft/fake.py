"""A fake ``nft`` for unit tests: an in-memory table ``inet mseg`` behind ``subprocess.run``'s signature.

``Nft(path, runner=FakeNft())`` runs every command of the apply engine against it instead of the kernel. Like
knftables' ``fake.go`` it does not parse nftables, it records. What it models is exactly what the engine relies on:

* the scratch parse of ``nft/jsonform.py`` (``unshare --net setpriv ... sh -c SCRIPT``): its JSON form is the
  untouched canaries, table inet mseg, one set (or map) per set of its listing with as many elements, and as
  many rules as the listing has, the first of which carries the text in its comment (``CARRIER``), so the judged
  JSON ``-j -f -`` loads stands for exactly that text and counts what the listing counts; ``scratch_items`` replaces the listing (a test of the
  checked path), ``scratch_error`` makes nft refuse the text;
* ``-j -c -f -`` validates: accepted, unless ``reject`` holds an error message (nft's own wording, ``/dev/stdin:…``);
* ``-j -f -`` loads a transaction that opens with the preamble (``table inet mseg {}`` / ``delete table inet mseg``):
  whatever follows the last ``delete table inet mseg`` becomes the table, and nothing the absent table. Any other
  text is refused loudly (the engine never sends one), so a test cannot pass on something the fake does not model;
* ``-j list table inet mseg`` lists it in the JSON form: the same objects the scratch parse made of the text that
  was loaded (so it lists back into the document that was loaded, as real nft does), or, after ``edit``, of the
  edited listing;
* ``-s list table inet mseg`` lists the table: a deterministic function of the loaded text (its lines without
  comments, blank lines or surrounding blanks), so loading a listing again lists the same; "No such file or
  directory" when there is no table;
* ``-j list counters table inet mseg``: the ``counter NAME {`` declarations of the table, with the packets and
  bytes a test put into ``counters``;
* ``list tables``;
* not ``nft --version``: a runner that asks it (``Nft(translate=True)``, to read a text without nft,
  ``nft/textform.py``) gets no release it knows and has nft parse every text in the scratch namespace modelled
  here; tests that count its calls say so with ``translate=False``;
* a kernel without nf_tables: with ``kernel_error`` set, every command fails with that message;
* the kernel's generation id: ``genid()`` bumps on every load and every ``edit``; install it as
  ``nft.runner.ruleset_genid`` (``patch_genid``) so the engine's "nothing changed since" shortcut is exercised.

``edit(listing)`` (or ``drop_table()``) changes the live table behind the engine's back, as a hand edit would.
``calls`` records every argv with its input; ``loads`` the loaded texts.
"""

import json
import re
import subprocess

PATH = "/usr/sbin/nft"
TABLE = "inet mseg"
PREAMBLE = "table inet mseg {}\ndelete table inet mseg\n"
MISSING = "Error: No such file or directory\nlist table inet mseg\n                 ^^^^\n"
_COUNTER_RE = re.compile(r"^counter (\S+) \{")
CARRIER = "fake-nft-text"


def listing_of(text):
    """The listing a loaded table text gives: its lines, stripped, without comments and blank lines."""
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith("#")]
    return "".join(line + "\n" for line in kept) or None


def typed_elements(block, size):
    """A set's (or map's) type as nft lists it in JSON, and ``size`` elements of that type (10.0.x.y addresses,
    address . port pairs, or addresses mapped to accept)."""
    key = re.search(r"^\s*type (.+)$", block, re.M).group(1).split(" : ")
    family = 6 if key[0].startswith("ipv6") else 4
    addresses = [("2001:db8::%x" % (i + 1)) if family == 6 else "10.0.%d.%d" % (i >> 8 & 255, i & 255)
                 for i in range(size)]
    if len(key) == 2:
        return {"type": key[0], "map": key[1], "elem": [[addr, {"accept": None}] for addr in addresses]}
    if " . " in key[0]:
        return {"type": key[0].split(" . "), "elem": [{"concat": [addr, 22]} for addr in addresses]}
    return {"type": key[0], "elem": addresses}


class FakeNft:
    """Callable like ``subprocess.run``; holds the live table as its listing (None: no table)."""

    def __init__(self, path=PATH):
        self.path = path
        self.table = None
        self.generation = 1
        self.reject = None
        self.fail_load = None
        self.kernel_error = None
        self.counters = {}
        self.scratch_items = None
        self.scratch_error = None
        self.calls = []
        self.loads = []
        self.source = None  # the text the live table was loaded from (None: edited by hand, or no table)

    # -- what tests use ---------------------------------------------------------------------------------------

    def genid(self):
        return self.generation

    def patch_genid(self, monkeypatch):
        """Make ``nft.runner.ruleset_genid`` read this fake's generation id."""
        from ansible_collections.mseg.fleet.plugins.module_utils.nft import runner
        monkeypatch.setattr(runner, "ruleset_genid", self.genid)

    def edit(self, listing):
        """Replace the live table behind the engine's back (a hand edit, another tool)."""
        self.table = listing_of(listing) if listing is not None else None
        self.source = None
        self.generation += 1

    def drop_table(self):
        self.edit(None)

    def commands(self):
        """The nft argument lists run so far, without the binary: ``[["-s", "list", ...], ...]``."""
        return [argv[1:] for argv, _input in self.calls if argv[0] == self.path]

    # -- subprocess.run ---------------------------------------------------------------------------------------

    def __call__(self, argv, input=None, capture_output=False, text=False, check=False, **_kwargs):
        self.calls.append((list(argv), input))
        if argv[0].endswith("/unshare") and "list ruleset" in argv[-1]:
            return self._scratch(argv, input or "")
        if argv[0] != self.path:
            return self._done(argv, 127, err="fake nft: %s is not modelled\n" % argv[0])
        args = list(argv[1:])
        if self.kernel_error:
            return self._done(argv, 1, err=self.kernel_error)
        if args == ["-j", "-c", "-f", "-"]:
            return self._done(argv, 1, err=self.reject) if self.reject else self._done(argv, 0)
        if args == ["-j", "-f", "-"]:
            return self._load(argv, self._carried(input or ""))
        if args == ["-f", "-"]:  # a text loaded by another tool (the engine loads only judged JSON)
            return self._load(argv, input or "")
        if args == ["-j", "list", "table"] + TABLE.split():
            if not self.table:
                return self._done(argv, 1, err=MISSING)
            items = [{"metainfo": {"json_schema_version": 1}}] + self.objects(self.source or self.table)
            return self._done(argv, 0, out=json.dumps({"nftables": items}))
        if args == ["-s", "list", "table"] + TABLE.split():
            return self._done(argv, 0, out=self.table) if self.table else self._done(argv, 1, err=MISSING)
        if args == ["-j", "list", "counters", "table"] + TABLE.split():
            return self._done(argv, 0, out=self._counters()) if self.table else self._done(argv, 1, err=MISSING)
        if args == ["list", "tables"]:
            return self._done(argv, 0, out="table %s\n" % TABLE if self.table else "")
        return self._done(argv, 1, err="fake nft: %r is not modelled\n" % (args,))

    def _scratch(self, argv, text):
        if self.scratch_error:
            return self._done(argv, 1, err=self.scratch_error)
        from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform
        items = self.scratch_items
        if items is None:
            canaries = [{kind: {"family": family, "table" if kind == "chain" else "name": jsonform.CANARY_NAME,
                                **({"name": "keep"} if kind == "chain" else {})}}
                        for family in jsonform.CANARY_FAMILIES for kind in ("table", "chain")]
            items = canaries + self.objects(text)
        return self._done(argv, 0, out=json.dumps({"nftables": items}))

    @staticmethod
    def objects(text):
        """The JSON objects that stand for ``text``: table, input chain, its sets and maps (as many elements as
        the listing shows), and its rules, the first carrying the text."""
        from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import count_listing
        where = {"family": "inet", "table": "mseg"}
        items = [{"table": {"family": "inet", "name": "mseg"}}, {"chain": dict(where, name="input")}]
        listing = listing_of(text.rsplit("delete table %s\n" % TABLE, 1)[-1]) or ""
        for block in re.findall(r"^((?:set|map) (\w+) \{\n.*?^\}\n)", listing, re.M | re.S):
            size = count_listing("chain x {\n}\n" + block[0])["elements"]
            items.append({block[0].split()[0]: dict(where, name=block[1], **typed_elements(block[0], size))})
        rules = max(1, count_listing(listing)["rules"])
        items.append({"rule": dict(where, chain="input", expr=[], comment=CARRIER + "\n" + text)})
        items.extend({"rule": dict(where, chain="input", expr=[{"accept": None}])} for dummy in range(rules - 1))
        return items

    @staticmethod
    def _carried(document):
        """The text a judged JSON transaction stands for (``CARRIER``), or the document itself."""
        for command in json.loads(document)["nftables"]:
            rule = command.get("add", {}).get("rule", {})
            if str(rule.get("comment", "")).startswith(CARRIER + "\n"):
                return rule["comment"][len(CARRIER) + 1:]
        return document

    def _load(self, argv, text):
        if not text.startswith(PREAMBLE):
            return self._done(argv, 1, err="fake nft: only a transaction that opens with the preamble is modelled\n")
        if self.fail_load:
            return self._done(argv, 1, err=self.fail_load)
        self.loads.append(text)
        self.source = text
        self.table = listing_of(text.rsplit("delete table %s\n" % TABLE, 1)[1])
        self.generation += 1
        return self._done(argv, 0)

    def _counters(self):
        names = [m.group(1) for m in map(_COUNTER_RE.match, self.table.splitlines()) if m]
        items = [{"counter": {"family": "inet", "table": "mseg", "name": name,
                              "packets": self.counters.get(name, (0, 0))[0],
                              "bytes": self.counters.get(name, (0, 0))[1]}} for name in names]
        return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}] + items})

    @staticmethod
    def _done(argv, rc, out="", err=""):
        return subprocess.CompletedProcess(argv, rc, out or "", err or "")
