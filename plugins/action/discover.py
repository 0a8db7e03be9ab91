# -*- coding: utf-8 -*-
# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Propose a policy from the flow records the hosts collected; the options are documented in
plugins/modules/discover.py, the engine in docs/discovery.md."""

from __future__ import annotations

import io
import ipaddress

from ansible.errors import AnsibleActionFail
from ansible_collections.mseg.fleet.plugins.module_utils.common.errors import MsegError
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.audit import add_audit, read_audit
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.check import discover
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.pcap import read_pcaps
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import (
    DEFAULT_SETTINGS, FIELDS, SETTINGS_KEYS, Flows, _port_range, read_csv,
)
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.report import write_report
from ansible_collections.mseg.fleet.plugins.plugin_utils.action import FleetAction
from ansible_collections.mseg.fleet.plugins.plugin_utils.inventory import gather_fleet, gather_system

HEADER = ",".join(FIELDS)   # the collector (host/discover.py, stdlib only) writes the same header
VAR_PREFIX = "mseg_discover_"


def _address(text):
    """The address ``text`` names (a host prefix such as 10.0.1.5/32 included), None for a wider prefix or junk."""
    try:
        net = ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        return None
    return net.network_address if net.prefixlen == net.max_prefixlen else None


def host_addresses(raw):
    """The addresses of one inventory host as the compiler reads them (mseg_addresses, else ansible_host)."""
    given = raw.get("addresses") or ([raw["ansible_host"]] if raw.get("ansible_host") else [])
    return {a for a in (_address(t) for t in (given if isinstance(given, list) else [given])) if a is not None}


def merge_records(records, fleet):
    """One CSV of every host's records, each connection once: a host that collected reports the connections it
    receives itself, so what another host saw itself open towards it is left out of that other host's records
    (a connection between two collecting hosts is in both tables). Returns (csv text, lines dropped as seen twice)."""
    owner = {}
    for name in records:
        for address in host_addresses(fleet.get(name) or {}):
            owner[address] = name
    lines = [HEADER]
    twice = 0
    for name in sorted(records):
        reader = io.StringIO(records[name])
        header = next(reader, "").strip()
        if header != HEADER:
            raise MsegError("records of %s: the header line is %r, not %r: the collector on that host is not "
                            "this collection's; run the playbook with the collection's own module" % (name, header, HEADER))
        for line in reader:
            line = line.strip()
            fields = line.split(",")
            if len(fields) == 6 and fields[5] == "" and owner.get(_address(fields[1])) not in (None, name):
                twice += 1
                continue
            if line:
                lines.append(line)
    return "\n".join(lines) + "\n", twice


def from_command_line(key, value):
    """A setting as ``-e name=value`` gives it, a string, read as the engine wants it: digits as a number,
    ``group_by`` as a comma-separated list; anything else is left to the engine to judge."""
    if not isinstance(value, str):
        return value
    if key == "group_by":
        return [word.strip() for word in value.split(",") if word.strip()]
    if key not in ("ephemeral_ports", "exclude") and value.strip().isdecimal():
        return int(value)
    return value


class ActionModule(FleetAction):
    NAME = "discover"

    def run(self, tmp=None, task_vars=None):
        result = super(FleetAction, self).run(tmp, task_vars)
        args = self.validated_args()
        try:
            result.update(self.propose(task_vars, args))
        except MsegError as exc:
            result.update(failed=True, msg="mseg.fleet.discover:\n%s" % exc, problems=exc.messages)
        return result

    def propose(self, task_vars, args):
        fleet, problems = gather_fleet(task_vars, self._templar)
        if problems:
            raise MsegError(problems)
        policy = args["policy"] if args["policy"] is not None else task_vars.get("mseg_policy")
        policy = self._templar.template(policy) if policy is not None else None
        # each setting defaults to the play's mseg_discover_<name>; the option's keys win
        settings = {key: from_command_line(key, self._templar.template(task_vars[VAR_PREFIX + key]))
                    for key in SETTINGS_KEYS if VAR_PREFIX + key in task_vars}
        settings.update(args["settings"])
        merged, twice = merge_records(args["records"] or {}, fleet)
        flows = read_csv(io.StringIO(merged), Flows(), source="records collected")
        for path in args["record_files"]:
            try:
                with open(path, encoding="utf-8") as handle:
                    read_csv(handle, flows, source=path)
            except (IOError, OSError) as exc:
                raise MsegError("record_files: cannot read %s: %s; give a CSV of flow records (docs/discovery.md)"
                                % (path, exc.strerror or exc))
        ephemeral = _port_range(str(settings.get("ephemeral_ports", DEFAULT_SETTINGS["ephemeral_ports"])))
        captures, from_captures, capture_problems = read_pcaps(args["pcaps"], flows, ephemeral or (32768, 60999))
        audit = audit_records(args["audit"], flows)
        report = discover(flows, fleet, policy, settings, gather_system(task_vars, self._templar))
        data = report.to_data()
        summary = {
            "hosts": {"collected": sorted(args["records"] or {}), "not_collected": dict(args["failed"]),
                      "incomplete": incomplete(args["status"])},
            "records": data["records"]["read"], "malformed": data["records"]["malformed"],
            "seen_twice": twice, "audit": audit,
            "pcaps": {"files": captures, "records": from_captures, "problems": capture_problems}, "flows_kept": len(data["flows"]), "rules": len(data["rules"]),
            "left_out": {reason: item["flows"] for reason, item in data["left_out"].items() if item["flows"]},
            "uncovered": len(data["coverage"]["uncovered"]),
            "closed_pairs": data["closed_pairs"]["count"],
            "current_would_drop": len(data["current"]["would_drop"]) if data["current"] else None,
            "current_unused_rules": len(data["current"]["unused_rules"]) if data["current"] else None,
        }
        notes = []
        changed = False
        files = []
        if args["dest"] and not self._task.check_mode:
            # write_files refuses a directory someone else could change, and writes records.csv 0600
            changed, texts = self.write_files(args["dest"], {"records.csv": merged}, "dest")
            try:
                names, notes = write_report(report, args["dest"])
            except (IOError, OSError) as exc:
                raise AnsibleActionFail("mseg.fleet.discover: cannot write to dest %s: %s"
                                        % (args["dest"], exc.strerror or exc))
            files = sorted(texts + ["%s/%s" % (args["dest"].rstrip("/"), name) for name in names])
            changed = True
        summary["notes"] = notes
        return dict(changed=changed, summary=summary, proposal=report.proposal.yaml, files=files,
                    lines=format_summary(summary, data))


def audit_records(given, flows):
    """Add the observe-mode audit records the hosts returned (``{host: discover_collect's audit}``) to ``flows``;
    returns what they gave, for the summary."""
    lines, windows, overflow, unreadable = {}, {}, {}, {}
    for host, item in sorted((given or {}).items()):
        item = item if isinstance(item, dict) else {}
        lines[host] = item.get("lines") if isinstance(item.get("lines"), list) else []
        if isinstance(item.get("from"), str) and isinstance(item.get("to"), str):
            windows[host] = (item["from"], item["to"])
        if item.get("overflow"):
            overflow[host] = item["overflow"]
        if item.get("unreadable"):
            unreadable[host] = item["unreadable"]
    audit, stats = read_audit(lines, windows)
    added, raised = add_audit(flows, audit)
    return dict(stats, flows_added=added, counts_raised=raised, overflow=overflow, unreadable=unreadable)


def incomplete(status):
    """Per host whose collector did not see the whole window, why (its status as discover_collect returns it)."""
    found = {}
    for name, state in sorted((status or {}).items()):
        why = []
        if state.get("overflow"):
            why.append("%d connection(s) not kept: max_flows (%s) distinct flows reached; raise "
                       "mseg_discover_max_flows" % (state["overflow"], state.get("max_flows")))
        if state.get("finished") is False:
            why.append("the collector stopped before the end of the window (%s sample(s))" % state.get("samples"))
        if why:
            found[name] = "; ".join(why)
    return found


def format_summary(summary, data):
    hosts = summary["hosts"]
    lines = ["Collected on %d host(s): %s" % (len(hosts["collected"]), ", ".join(hosts["collected"]) or "none")]
    for name, why in sorted(hosts["not_collected"].items()):
        lines.append("NOT collected on %s: %s" % (name, why))
    for name, why in sorted(hosts["incomplete"].items()):
        lines.append("INCOMPLETE on %s: %s" % (name, why))
    for item in summary["pcaps"]["files"]:
        lines.append("capture %s: %d packet(s)" % (item["file"], item["packets"]))
    lines.extend("CAPTURE %s" % problem for problem in summary["pcaps"]["problems"])
    audit = summary["audit"]
    if not summary["records"] and not audit["used"]:
        lines.append("EMPTY: no connection was recorded; check the window was long enough for the traffic that "
                     "matters, and that the hosts carry the mseg.fleet table (observe mode)")
    if audit["lines"] or audit["unreadable"]:
        lines.append("audit records (observe mode): %d used, %d outside the window, %d rejected; %d flow(s) the "
                     "collectors had not recorded, %d counted higher"
                     % (audit["used"], audit["outside_window"], audit["rejected"], audit["flows_added"],
                        audit["counts_raised"]))
    lines.extend(audit["problems"])
    for name, count in sorted(audit["overflow"].items()):
        lines.append("INCOMPLETE audit of %s: %d audit line(s) of the window over the bound, not read" % (name, count))
    for name, why in sorted(audit["unreadable"].items()):
        lines.append("audit records of %s: cannot read %s" % (name, "; ".join(why)))
    lines.append("%d record(s) (%d malformed), %d flow(s) kept, %d rule(s) proposed"
                 % (summary["records"], summary["malformed"], summary["flows_kept"], summary["rules"]))
    if summary["left_out"]:
        lines.append("left out: " + ", ".join("%s %d" % item for item in sorted(summary["left_out"].items())))
    for rule in data["rules"]:
        lines.append("  rule %s %s: %d flow(s), %d connection(s)"
                     % (rule["id"], rule["name"], rule["flows"], rule["connections"]))
    if summary["uncovered"]:
        lines.append("COVERAGE: %d kept flow(s) the proposal would not allow (a defect: report it)" % summary["uncovered"])
    if summary["current_would_drop"] is not None:
        lines.append("current policy: would drop %d observed flow(s); %d allow rule(s) unused"
                     % (summary["current_would_drop"], summary["current_unused_rules"]))
    if summary["closed_pairs"] is not None:
        lines.append("%d label pair(s) stay closed" % summary["closed_pairs"])
    lines.extend(summary["notes"])
    return lines
