"""The controller role's nginx and keepalived configurations, rendered by Ansible's own templating with the role's
defaults: what a client without a certificate can hold, what resumes across a reload, and whose VRRP adverts count."""

import os
import re

import pytest
import yaml

ansible_template = pytest.importorskip("ansible.template")
from ansible.parsing.dataloader import DataLoader  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLE = os.path.join(ROOT, "roles", "controller")


def render(template, **overrides):
    trust = getattr(ansible_template, "trust_as_template", lambda text: text)  # ansible-core >= 2.19
    with open(os.path.join(ROLE, "defaults", "main.yml"), encoding="utf-8") as handle:
        variables = {k: trust(v) if isinstance(v, str) else v for k, v in yaml.safe_load(handle).items()}
    variables.update({
        "ansible_managed": "managed", "inventory_hostname": "ctl-01", "ansible_host": "10.0.0.61",
        "groups": {"controllers": ["ctl-01", "ctl-02"], "all": ["ctl-01", "ctl-02"]},
        "hostvars": {"ctl-01": {"ansible_host": "10.0.0.61"}, "ctl-02": {"ansible_host": "10.0.0.62"}},
        "ansible_facts": {"default_ipv4": {"interface": "eth0"}},
        "controller_vip": "10.0.0.60",
    })
    variables.update(overrides)
    with open(os.path.join(ROLE, "templates", *template.split("/")), encoding="utf-8") as handle:
        source = handle.read()
    templar = ansible_template.Templar(loader=DataLoader(), variables=variables)
    return templar.template(trust(source))


def directives(text, context=None):
    """``{directive: [values]}`` of the http level (``context`` None) or of the server listening on ``context``."""
    found = {}
    depth = 0
    server = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.endswith("{"):
            depth += 1
            if line.startswith("server"):
                server = []
            continue
        if line == "}":
            depth -= 1
            if depth == 0 and server is not None:
                server = None
            continue
        name, _sep, value = line.rstrip(";").partition(" ")
        if server is not None and name == "listen":
            server.append(value)
        in_server = server is not None and depth == 1 and any(v.startswith(str(context)) for v in server)
        if (context is None and depth == 0) or (context is not None and in_server):
            found.setdefault(name, []).append(value.strip())
    return found


def seconds(value):
    return int(re.fullmatch(r"([0-9]+)s?", value).group(1))


def test_a_client_without_a_certificate_is_dropped_within_seconds_not_a_minute():
    http = directives(render("etc/nginx/conf.d/mseg-controller.conf.j2"))
    # nginx's default is 60 s: one byte per connection held a worker's slot for a minute
    assert seconds(http["client_header_timeout"][0]) <= 10
    assert seconds(http["send_timeout"][0]) <= 30


@pytest.mark.parametrize("port", [8443, 443])
def test_one_source_holds_a_bounded_number_of_connections_on_each_port(port):
    text = render("etc/nginx/conf.d/mseg-controller.conf.j2", controller_conn_per_source=7)
    zone = directives(text)["limit_conn_zone"][0].split()
    assert zone[0] == "$binary_remote_addr"
    name = zone[1].split("=")[1].split(":")[0]
    assert directives(text, port)["limit_conn"] == ["%s 7" % name]


def test_no_version_in_headers_and_no_session_tickets_across_reloads():
    http = directives(render("etc/nginx/conf.d/mseg-controller.conf.j2"))
    assert http["server_tokens"] == ["off"]
    # newer nginx keeps the ticket key across reloads: only an explicit off holds on every version
    assert http["ssl_session_tickets"] == ["off"]


def test_keepalived_takes_adverts_only_from_the_other_replicas():
    text = render("etc/keepalived/keepalived.conf.j2")
    instance = text[text.index("vrrp_instance"):]
    assert re.search(r"^\s*check_unicast_src\s*$", instance, re.M)
    peers = re.search(r"unicast_peer \{([^}]*)\}", instance).group(1).split()
    assert peers == ["10.0.0.62"]
    assert not re.search(r"^\s*authentication\s*\{", instance, re.M)
