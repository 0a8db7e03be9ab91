# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``tag add``: set labels in a host's own ``mseg_tags``, in its host_vars file, keeping every other line, comment
and the order of keys.

The edit is line-based and refuses whatever it cannot edit safely (a flow mapping ``{...}``, a label whose value is
a list, anchors, a file that is not a mapping): the YAML read back from the edited text must equal the YAML read
from the old text with only the new labels changed, or nothing is written. Writing is the caller's (``replace``):
a temporary file in the same directory, then one rename, so a reader sees the old file or the new one.
"""

import json
import os
import re
import tempfile

import yaml

from mseg_cli.errors import CliError

LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_TOP_TAGS = re.compile(r"^mseg_tags[ \t]*:[ \t]*(#.*)?$")
_TOP_TAGS_ANY = re.compile(r"^mseg_tags[ \t]*:")
_ENTRY = re.compile(r"^([ \t]+)([A-Za-z0-9_][A-Za-z0-9_.-]*)([ \t]*:[ \t]*)([^#\n]*?)([ \t]+#.*)?$")
_VALUE_STARTS = ("[", "{", "|", ">", "&", "*", "!")
YAML_SUFFIXES = (".yml", ".yaml")


def scalar(value):
    """``value`` as a YAML scalar that reads back as the same string: bare when that is safe, else double-quoted."""
    if _PLAIN.match(value):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def host_vars_file(inventory, host):
    """The file that holds (or will hold) ``host``'s own variables, beside ``inventory`` (a directory or a file)."""
    base = inventory if os.path.isdir(inventory) else os.path.dirname(os.path.abspath(inventory))
    directory = os.path.join(base, "host_vars")
    nested = os.path.join(directory, host)
    if os.path.isdir(nested):
        names = sorted(n for n in os.listdir(nested) if n.endswith(YAML_SUFFIXES))
        for name in names:
            with open(os.path.join(nested, name), encoding="utf-8") as handle:
                if any(_TOP_TAGS_ANY.match(line) for line in handle):
                    return os.path.join(nested, name)
        return os.path.join(nested, "mseg_tags.yml")
    for suffix in YAML_SUFFIXES:
        if os.path.isfile(nested + suffix):
            return nested + suffix
    return nested + ".yml"


def load(text, path):
    """The variables of the host_vars file ``path`` (its ``text``); CliError when it is not YAML or not a mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError("cannot read %s as YAML (%s); fix the file first, nothing was changed"
                       % (path, str(exc).replace("\n", " ")))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CliError("%s does not hold a mapping of variables; fix the file first, nothing was changed" % path)
    return data


def _refuse(path, why):
    return CliError("cannot edit %s safely: %s; edit it by hand (then mseg-cli trace or mseg.fleet.render checks it), "
                    "nothing was changed" % (path, why))


def _in_block(line):
    """Whether ``line`` still belongs to the block of the top-level key above it: blank, a comment, or indented."""
    return not line.strip() or line.strip().startswith("#") or line[0] in " \t"


def edit(text, labels, path):
    """The text of the host_vars file ``path`` (``text``; None when it does not exist yet) with ``labels`` (label
    -> value, in order) set in its ``mseg_tags``; CliError when it cannot be edited safely."""
    if text is None:
        return "---\nmseg_tags:\n" + "".join("  %s: %s\n" % (k, scalar(v)) for k, v in labels.items())
    data = load(text, path)
    old_tags = data.get("mseg_tags")
    if old_tags is not None and not isinstance(old_tags, dict):
        raise _refuse(path, "its mseg_tags is not a mapping of label to value")
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    starts = [i for i, line in enumerate(lines) if _TOP_TAGS_ANY.match(line)]
    if "mseg_tags" not in data:
        if starts:
            raise _refuse(path, "mseg_tags appears on line %d but is not a top-level key" % (starts[0] + 1))
        lines.append("mseg_tags:\n")
        lines.extend("  %s: %s\n" % (k, scalar(v)) for k, v in labels.items())
    else:
        if len(starts) != 1:
            raise _refuse(path, "mseg_tags is not written as one 'mseg_tags:' line at the start of a line")
        start = starts[0]
        if not _TOP_TAGS.match(lines[start].rstrip("\n")):
            raise _refuse(path, "mseg_tags on line %d is in flow style ({...}); write one label per line" % (start + 1))
        end = start + 1
        while end < len(lines) and _in_block(lines[end]):
            end += 1
        entries = {}
        last = start
        indent = None
        for i in range(start + 1, end):
            stripped = lines[i].strip()
            if not stripped or stripped.startswith("#"):
                continue
            match = _ENTRY.match(lines[i].rstrip("\n"))
            if match is None or (indent is not None and match.group(1) != indent):
                raise _refuse(path, "line %d of mseg_tags is not 'label: value'" % (i + 1))
            indent = match.group(1)
            entries[match.group(2)] = (i, match)
            last = i
        indent = indent or "  "
        added = []
        for key, value in labels.items():
            if key in entries:
                i, match = entries[key]
                if not match.group(4) or match.group(4).startswith(_VALUE_STARTS):
                    raise _refuse(path, "the value of %s on line %d is not a single value" % (key, i + 1))
                lines[i] = "%s%s%s%s%s\n" % (match.group(1), key, match.group(3), scalar(value), match.group(5) or "")
            else:
                added.append("%s%s: %s\n" % (indent, key, scalar(value)))
        lines[last + 1:last + 1] = added
    new_text = "".join(lines)
    expected = dict(data, mseg_tags=dict(old_tags or {}, **labels))
    try:
        again = load(new_text, path)
    except CliError:
        again = None
    if again != expected:
        raise _refuse(path, "the edited file would not read back as the same variables plus the new labels")
    return new_text


def replace(path, text, before):
    """Write ``text`` to ``path`` atomically (temporary file in the same directory, fsync, rename), keeping the old
    file's mode; refuse if the file is no longer ``before`` (its bytes when read, None if it did not exist)."""
    current = read(path)
    if current != before:
        raise CliError("%s changed while the edit was checked; nothing was written, run the command again" % path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    mode = os.stat(path).st_mode & 0o7777 if before is not None else 0o644
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read(path):
    """The text of ``path``, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
