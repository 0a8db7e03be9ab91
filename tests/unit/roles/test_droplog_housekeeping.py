"""The push-mode drop log's housekeeping (issue 15 item 11): its runtime log is rotated by the agent's own
rotation, it stops while its host is in bypass and comes back after, and it is retired when the host gets an agent
(one NFLOG group binds to one socket: a leftover collector would leave the agent's drop log deaf)."""

import os

import jinja2
import yaml

from ansible_collections.mseg.fleet.plugins.module_utils.common import contract

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
AGENT = os.path.join(ROOT, "roles", "agent")
DROPLOG = os.path.splitext(contract.DROPLOG_UNIT)[0]


def load(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def render(path, rotate, **values):
    with open(os.path.join(AGENT, "templates", path), encoding="utf-8") as handle:
        template = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True).from_string(handle.read())
    return template.render(__agent_rotate=rotate, ansible_managed="managed", agent_log_rotate_size="10M",
                           agent_log_rotate_count=7, agent_log_rotate_check="15min", **values)


def task(tasks, name):
    (found,) = [t for t in tasks if t.get("name") == name]
    return found


def test_both_runtime_logs_go_through_the_one_rotation():
    main = load("roles", "agent", "tasks", "main.yml")
    droplog = load("roles", "agent", "tasks", "droplog.yml")
    agent_rotate = task(main, "Rotate the runtime log")
    droplog_rotate = task(droplog, "Rotate the drop log's runtime log as the agent's is rotated")
    assert agent_rotate["ansible.builtin.include_tasks"] == droplog_rotate["ansible.builtin.include_tasks"] \
        == "logrotate.yml"
    assert agent_rotate["vars"]["__agent_rotate"] == {
        "name": "mseg-agent", "log": "{{ 'AGENT_RUNTIME_LOG' | mseg.fleet.wire }}", "user": "{{ agent_user }}"}
    assert droplog_rotate["vars"]["__agent_rotate"] == {
        "name": "{{ __agent_droplog_name }}", "log": "{{ 'DROPLOG_RUNTIME_LOG' | mseg.fleet.wire }}", "user": ""}
    names = [t["name"] for t in droplog]
    assert names.index("Rotate the drop log's runtime log as the agent's is rotated") < names.index("Run the drop log")
    # the rotation's names come from the contract's unit name
    assert load("roles", "agent", "vars", "main.yml")["__agent_droplog_name"] == \
        "{{ 'DROPLOG_UNIT' | mseg.fleet.wire | splitext | first }}"


def test_the_drop_log_is_rotated_as_root_without_a_fixed_user_and_the_agents_as_its_user():
    droplog = render("etc/logrotate.d/mseg-runtime-log.j2",
                     {"name": DROPLOG, "log": contract.DROPLOG_RUNTIME_LOG, "user": ""})
    assert "%s {\n" % contract.DROPLOG_RUNTIME_LOG in droplog
    assert "    size 10M\n    rotate 7\n" in droplog
    directives = [line.split()[0] for line in droplog.splitlines() if line.startswith("    ")]
    assert directives == ["size", "rotate", "compress", "delaycompress", "missingok", "notifempty"]  # no su, create
    agent = render("etc/logrotate.d/mseg-runtime-log.j2",
                   {"name": "mseg-agent", "log": contract.AGENT_RUNTIME_LOG, "user": "mseg-agent"})
    assert "%s {\n    su mseg-agent mseg-agent\n" % contract.AGENT_RUNTIME_LOG in agent
    assert "    create 0600 mseg-agent mseg-agent\n}" in agent
    service = render("etc/systemd/system/mseg-runtime-log-logrotate.service.j2",
                     {"name": DROPLOG, "log": contract.DROPLOG_RUNTIME_LOG, "user": ""})
    assert "ConditionPathExists=%s\n" % contract.DROPLOG_RUNTIME_LOG in service
    assert ("ExecStart=/usr/sbin/logrotate --state /var/lib/logrotate/%s.status /etc/logrotate.d/%s\n"
            % (DROPLOG, DROPLOG)) in service
    timer = render("etc/systemd/system/mseg-runtime-log-logrotate.timer.j2",
                   {"name": DROPLOG, "log": contract.DROPLOG_RUNTIME_LOG, "user": ""})
    assert "OnUnitActiveSec=15min\n" in timer and "WantedBy=timers.target" in timer


def test_the_rotation_is_named_per_log_so_the_agents_timer_keeps_its_name():
    tasks = load("roles", "agent", "tasks", "logrotate.yml")
    dests = [t["ansible.builtin.template"]["dest"] for t in tasks if "ansible.builtin.template" in t]
    assert dests == ["/etc/logrotate.d/{{ __agent_rotate.name }}",
                     "/etc/systemd/system/{{ __agent_rotate.name }}-logrotate.{{ item }}"]
    timer = [t for t in tasks if "ansible.builtin.systemd_service" in t][0]["ansible.builtin.systemd_service"]
    assert timer["name"] == "{{ __agent_rotate.name }}-logrotate.timer" and timer["enabled"] is True


def test_installing_the_agent_retires_the_push_mode_drop_log_before_the_agent_runs():
    main = load("roles", "agent", "tasks", "main.yml")
    names = [t["name"] for t in main]
    retire = names.index("Retire the push-mode drop log this host may have run before its agent")
    assert main[retire]["ansible.builtin.include_tasks"] == "droplog_remove.yml"
    assert retire < names.index("Run the agent")
    remove = load("roles", "agent", "tasks", "droplog_remove.yml")
    stop = task(remove, "Stop and disable the push-mode drop log (the agent collects the records itself)")
    assert stop["ansible.builtin.systemd_service"]["state"] == "stopped"
    assert stop["ansible.builtin.systemd_service"]["enabled"] is False
    gone = task(remove, "Remove the push-mode drop log's unit and its log's rotation")
    assert gone["ansible.builtin.file"]["state"] == "absent"
    assert gone["loop"] == [
        "{{ __agent_droplog_unit }}",
        "{{ 'UNIT_DIR' | mseg.fleet.wire }}/{{ __agent_droplog_name }}-logrotate.timer",
        "{{ 'UNIT_DIR' | mseg.fleet.wire }}/{{ __agent_droplog_name }}-logrotate.service",
        "/etc/logrotate.d/{{ __agent_droplog_name }}"]
    # the log itself stays: the observe report still reads what it collected
    assert not any("DROPLOG_RUNTIME_LOG" in str(t) for t in remove)


def test_bypass_stops_the_collector_and_observe_or_enforce_starts_it_again():
    policy = load("roles", "policy", "tasks", "main.yml")
    stop = task(policy, "Stop the drop log on a push-mode host in bypass")
    assert stop["ansible.builtin.include_role"] == {"name": "mseg.fleet.agent", "tasks_from": "droplog_stop"}
    assert "__policy_compiled.summary[inventory_hostname].mode == 'bypass'" in stop["when"]
    start = task(policy, "Look for an agent on this host (it collects the drop log itself)")
    assert "__policy_compiled.summary[inventory_hostname].mode in ['observe', 'enforce']" in start["when"]
    run = task(load("roles", "agent", "tasks", "droplog.yml"), "Run the drop log")["ansible.builtin.systemd_service"]
    assert run["enabled"] is True and run["state"] == "started"
    stopped = task(load("roles", "agent", "tasks", "droplog_stop.yml"),
                   "Stop the drop log while the host is in bypass")["ansible.builtin.systemd_service"]
    assert stopped == {"name": "{{ 'DROPLOG_UNIT' | mseg.fleet.wire }}", "state": "stopped", "enabled": False}
    # the emergency bypass playbook (no policy role) stops it too, on push-mode hosts, after the bypass table
    (play,) = load("playbooks", "bypass.yml")
    names = [t["name"] for t in play["tasks"]]
    emergency = play["tasks"][names.index(
        "Stop the push-mode drop log (a bypass table logs nothing; mseg.fleet.mode starts it again)")]
    assert emergency["ansible.builtin.include_role"]["tasks_from"] == "droplog_stop"
    assert names.index("Replace table inet mseg with the bypass table") < names.index(emergency["name"])
