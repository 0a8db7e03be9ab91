"""Compile + render benchmark: the engine against what a user would otherwise write, and the playbooks around it.

    python benchmarks/compile.py [--sizes 500,1000,2000,5000,10000] [--rules 500] [--baseline-sample 100]
                                 [--playbook-sizes 1000,10000] [--playbook-rules 31]

It generates a fleet of N hosts with realistic labels (role, env, zone, app) and a policy of about 500 rules, then
times ``compile_fleet`` + ``render_plan`` for every host on one core. At the baseline sizes (500 and 1,000) it
also runs, on the same inventory and policy, the usual hand-written approach: one Jinja template per host that
loops over every rule and, for each rule that selects the host, over every host of the inventory to collect the
peers. That baseline is timed on a fixed sample of hosts and scaled to N (it grows with N x N, so a full run takes
minutes); the ratio printed is baseline / engine. Absolute times are for information only: this is a noisy machine.

Then the product path, what a user runs (``--playbook-sizes``, empty to skip): for each size it writes an inventory
directory (8 role groups whose group_vars give ``mseg_tags: {role: ...}``, each host its own ``mseg_tags`` env, zone
and app and its ``ansible_host``, the policy in group_vars/all) and runs, each in its own ``ansible-playbook``
process: a trivial play (one ``debug`` task, run once, over every host: Ansible's own cost of the inventory,
the baseline), ``mseg.fleet.render``, and the rollout's compile step (the compile play of ``mseg.fleet.rollout`` without its
health-probe check, whose registered result every batch applies, a task that takes one host's ruleset from it as
the policy role does, and the rollout's clean-up play). For each it prints the wall time and the peak memory (the largest max RSS among the run's processes,
``getrusage(RUSAGE_CHILDREN)`` in a process that runs nothing else), and both as ratios to the trivial play.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

import jinja2  # noqa: E402
import yaml  # noqa: E402

from ansible_collections.mseg.fleet.plugins.module_utils.compile.fleet import compile_fleet  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.render.nftables import render_plan  # noqa: E402

ROLES = ["web", "app", "db", "cache", "queue", "search", "auth", "api", "batch", "mon", "log", "proxy",
         "mail", "dns", "ntp", "vpn", "ci", "git", "ldap", "historian"]
ENVS = ["prod", "stage", "dev"]
ZONES = ["zone%02d" % i for i in range(10)]
PORTS = ["tcp/22", "tcp/80", "tcp/443", "tcp/5432", "tcp/6379", "tcp/8080", "tcp/8000-8099", "udp/53", "icmp",
         "tcp/9100", "udp/123", "tcp/389"]

# The baseline: one template per host, as an Ansible user would write it with hostvars and groups.
BASELINE = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string("""\
{% macro matches(sel, tags) -%}
{%- set ns = namespace(ok=true) -%}
{%- for key, want in sel.get('tags', {}).items() -%}
{%- if tags.get(key) not in (want if want is not string else [want]) %}{% set ns.ok = false %}{% endif -%}
{%- endfor -%}
{{ 'yes' if ns.ok else 'no' }}
{%- endmacro %}
table inet mseg {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
{% for rule in policy.rules %}
{% if 'tags' in rule.to and matches(rule.to, hostvars[inventory_hostname].mseg_tags) == 'yes' %}
{% for peer in groups['all'] %}
{% if 'tags' in rule['from'] and matches(rule['from'], hostvars[peer].mseg_tags) == 'yes' %}
{% for port in rule.get('ports', ['all']) %}
    ip saddr {{ hostvars[peer].ansible_host }} {{ port }} {{ 'drop' if rule.get('action') == 'deny' else 'accept' }} comment "ID={{ rule.id }}"
{% endfor %}
{% endif %}
{% endfor %}
{% endif %}
{% endfor %}
  }
}
""")


def make_fleet(size, seed=1):
    rng = random.Random(seed)
    hosts = {}
    for index in range(size):
        role = ROLES[index % len(ROLES)]
        name = "%s-%05d" % (role, index)
        hosts[name] = {
            "tags": {"role": role, "env": ENVS[rng.randrange(3)], "zone": ZONES[rng.randrange(10)],
                     "app": "app%03d" % rng.randrange(max(1, size // 20))},
            "groups": [role],
            "addresses": ["10.%d.%d.%d" % (index // 65536 + 1, index // 256 % 256, index % 256),
                          "fd00:%x::%x" % (index // 65536 + 1, index % 65536 + 1)],
            "ansible_host": "10.%d.%d.%d" % (index // 65536 + 1, index // 256 % 256, index % 256),
            "mode": rng.choice(["enforce", "enforce", "observe"]),
            "management": [{"cidr": "10.250.0.0/24", "ports": ["tcp/22"]}],
        }
    return hosts


def make_policy(rules, seed=2, roles=None):
    roles = ROLES if roles is None else roles
    rng = random.Random(seed)
    items = []
    for rule_id in range(1, rules + 1):
        src = {"tags": {"role": rng.choice(roles), "env": rng.choice(ENVS)}}
        dst = {"tags": {"role": rng.choice(roles), "env": src["tags"]["env"]}}
        if rule_id % 25 == 0:
            src = {"cidr": ["192.0.2.0/24", "198.51.100.0/24"]}
        if rule_id % 7 == 0:
            dst["tags"]["zone"] = rng.sample(ZONES, 3)
        item = {"id": rule_id, "from": src, "to": dst, "ports": rng.sample(PORTS, rng.randrange(1, 4))}
        if rule_id % 20 == 0:
            item["action"] = "deny"
        elif rule_id % 31 == 0:
            item["action"] = "log"
        items.append(item)
    return {"defaults": {"ingress": "deny", "egress": "allow"}, "rules": items}


def time_engine(hosts, policy, repeats):
    times = []
    size = 0
    for _repeat in range(repeats):
        start = time.perf_counter()
        fleet = compile_fleet(policy, hosts)
        size = 0
        for name in fleet.plans:
            size += len(render_plan(fleet.plans[name])[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times), size


def time_baseline(hosts, policy, sample):
    """Seconds the Jinja baseline takes for every host: rendered for every host (sample 0), or for ``sample`` of
    them and scaled (each host's template loops over all of them, so every host costs about the same)."""
    hostvars = {name: {"mseg_tags": h["tags"], "ansible_host": h["ansible_host"]} for name, h in hosts.items()}
    groups = {"all": sorted(hosts)}
    names = sorted(hosts)
    if 0 < sample < len(names):
        names = names[:: max(1, len(hosts) // sample)][:sample]
    start = time.perf_counter()
    for name in names:
        BASELINE.render(policy=policy, hostvars=hostvars, groups=groups, inventory_hostname=name)
    per_host = (time.perf_counter() - start) / len(names)
    return per_host * len(hosts), len(names)


# ---- the product path: ansible-playbook over a generated inventory

PLAYBOOK_ROLES = ["web", "app", "db", "cache", "queue", "auth", "api", "batch"]
# How a batch of the rollout takes its host's ruleset from the compile step's registered result (what
# roles/policy/tasks/main.yml hands to nft_apply), once after the compile step.
HOST_RULESET = ("{{ __rollout_compiled.rulesets[inventory_hostname] if __rollout_compiled.rulesets is defined else "
                "lookup('ansible.builtin.file', __rollout_compiled.render_dir ~ '/' ~ inventory_hostname "
                "~ ('RENDERED_SUFFIX' | mseg.fleet.wire), rstrip=false) }}")
# A process that runs one command and prints the peak RSS (KiB) of the largest process it waited for.
MAXRSS = ("import resource, subprocess, sys\n"
          "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode\n"
          "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def make_inventory(directory, size, rules, seed=3):
    """An inventory directory of ``size`` hosts in 8 role groups and a ``rules``-rule policy over their labels."""
    rng = random.Random(seed)
    groups = {role: {"hosts": {}} for role in PLAYBOOK_ROLES}
    for index in range(size):
        role = PLAYBOOK_ROLES[index % len(PLAYBOOK_ROLES)]
        groups[role]["hosts"]["%s-%05d" % (role, index)] = {
            "ansible_host": "10.%d.%d.%d" % (index // 65536 + 1, index // 256 % 256, index % 256),
            "mseg_tags": {"env": ENVS[rng.randrange(3)], "zone": ZONES[rng.randrange(10)],
                          "app": "app%02d" % rng.randrange(50)}}
    os.makedirs(os.path.join(directory, "group_vars"))
    with open(os.path.join(directory, "hosts.yml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump({"all": {"children": groups}}, handle, default_flow_style=None)
    for role in PLAYBOOK_ROLES:
        with open(os.path.join(directory, "group_vars", role + ".yml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump({"mseg_tags": {"role": role}}, handle)
    policy = make_policy(rules, seed=4, roles=PLAYBOOK_ROLES)
    policy["defaults"]["ingress"] = "deny"
    with open(os.path.join(directory, "group_vars", "all.yml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump({"mseg_policy": policy, "mseg_mode": "enforce"}, handle)


def write_playbooks(directory):
    """The trivial play and the rollout's compile step (the first play of rollout.yml without its health-probe
    check, a task that takes one host's ruleset from its result, and the last play, which cleans up) as
    playbook files in ``directory``."""
    trivial = [{"name": "Trivial", "hosts": "all", "connection": "local", "gather_facts": False,
                "tasks": [{"name": "One task", "ansible.builtin.debug": {"msg": "{{ ansible_play_hosts_all | length }}"},
                           "run_once": True}]}]
    with open(os.path.join(ROOT, "playbooks", "rollout.yml"), encoding="utf-8") as handle:
        rollout = yaml.safe_load(handle)
    first = dict(rollout[0], connection="local",
                 tasks=[task for task in rollout[0]["tasks"] if "ansible.builtin.include_role" not in task])
    first["tasks"].append({"name": "Take a host's ruleset", "run_once": True,
                           "ansible.builtin.set_fact": {"__bench_ruleset": HOST_RULESET}})
    last = dict(rollout[-1], connection="local")
    paths = {}
    for name, plays in (("trivial", trivial), ("rollout-compile", [first, last])):
        paths[name] = os.path.join(directory, name + ".yml")
        with open(paths[name], "w", encoding="utf-8") as handle:
            yaml.safe_dump(plays, handle, sort_keys=False)
    return paths


def run_measured(command, env):
    """(seconds, peak RSS in MiB of the largest process) of ``command``; exits on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MAXRSS] + command, capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    try:
        returncode, maxrss = (int(field) for field in proc.stdout.split())
    except ValueError:
        returncode, maxrss = proc.returncode, 0
    if returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(command), proc.stderr[-3000:]))
    return seconds, maxrss / 1024.0


def time_playbooks(size, rules, repeats):
    """Per variant, the median seconds and the peak MiB over ``repeats`` runs (each variant once per round)."""
    playbook = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or "ansible-playbook"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="0", ANSIBLE_RETRY_FILES_ENABLED="0")
    work = tempfile.mkdtemp(prefix="mseg-bench-")
    try:
        os.chmod(work, 0o700)
        inventory = os.path.join(work, "inventory")
        make_inventory(inventory, size, rules)
        paths = write_playbooks(work)
        commands = {
            "trivial play": [playbook, "-i", inventory, paths["trivial"]],
            "render": [playbook, "-i", inventory, "mseg.fleet.render", "-e", "mseg_render_dir=%s/out" % work],
            "rollout compile": [playbook, "-i", inventory, paths["rollout-compile"]],
        }
        runs = {name: [] for name in commands}
        for _round in range(repeats):
            for name, command in commands.items():
                runs[name].append(run_measured(command, env))
        return {name: (statistics.median(s for s, _m in found), max(m for _s, m in found), found)
                for name, found in runs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report_playbooks(sizes, rules, repeats):
    print()
    print("product path: ansible-playbook over an inventory of 8 role groups, host tags, %d rules; median of %d, "
          "peak RSS the largest of them; load average %.2f" % (rules, repeats, os.getloadavg()[0]))
    print("%8s %-16s %10s %10s %10s %10s   %s"
          % ("hosts", "run", "seconds", "peak MiB", "time x", "memory x", "every run (s / MiB)"))
    for size in sizes:
        found = time_playbooks(size, rules, repeats)
        print("%8d (load average after: %.2f)" % (size, os.getloadavg()[0]))
        base_s, base_m, _runs = found["trivial play"]
        for name, (seconds, mib, every) in found.items():
            print("%8d %-16s %10.2f %10.0f %9.2fx %9.2fx   %s"
                  % (size, name, seconds, mib, seconds / base_s, mib / base_m,
                     " ".join("%.1f/%.0f" % run for run in every)), flush=True)
    print("time x, memory x: ratio to the trivial play (one debug task run once over every host) of the same size, same run; "
          "targets at 10,000 hosts: render time x <= 1.5, peak memory < 1024 MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2000,5000,10000")
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--baseline-sizes", default="500,1000")
    parser.add_argument("--baseline-sample", type=int, default=0,
                        help="render the baseline for this many hosts and scale to N (default 0: every host)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--playbook-sizes", default="1000,10000",
                        help="inventory sizes of the product-path runs (ansible-playbook); empty: skip them")
    parser.add_argument("--playbook-rules", type=int, default=31)
    parser.add_argument("--playbook-repeats", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    baseline_sizes = {int(s) for s in args.baseline_sizes.split(",") if s}
    policy = make_policy(args.rules)
    print("compile + render, %d rules, median of %d runs, one core (%s)"
          % (args.rules, args.repeats, os.uname().release))
    print("%8s %10s %10s %12s %14s %8s" % ("hosts", "engine s", "ms/host", "MB rendered", "baseline s", "ratio"))
    for size in sizes:
        hosts = make_fleet(size)
        seconds, rendered = time_engine(hosts, policy, args.repeats if size <= 2000 else 1)
        baseline = ratio = "-"
        if size in baseline_sizes:
            estimate, sampled = time_baseline(hosts, policy, args.baseline_sample)
            baseline = "%.2f" % estimate if sampled == size else "%.2f (%d)" % (estimate, sampled)
            ratio = "%.1fx" % (estimate / seconds)
        print("%8d %10.2f %10.3f %12.1f %14s %8s"
              % (size, seconds, 1000 * seconds / size, rendered / 1e6, baseline, ratio), flush=True)
    print("baseline s: one Jinja template per host over groups/hostvars, rendered for every host (with "
          "--baseline-sample K: for K hosts, shown as (K), and scaled); ratio = baseline / engine")
    playbook_sizes = [int(s) for s in args.playbook_sizes.split(",") if s]
    if playbook_sizes:
        report_playbooks(playbook_sizes, args.playbook_rules, args.playbook_repeats)


if __name__ == "__main__":
    main()
