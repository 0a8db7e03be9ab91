"""Discovery's report files: the map as CSV and Graphviz, drawn when dot is there, said when it is not."""

import json
import os
import shutil
import stat

import pytest
import yaml

from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover import report as report_module
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.check import discover
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.records import read_csv
from ansible_collections.mseg.fleet.plugins.module_utils.compile.discover.report import write_report

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "discover")

EXPECTED_MAP = """\
src_group,dst_group,services,flows,connections,rules
192.0.2.50,role=web,tcp/443,1,9,1050
2001:db8::5,role=web,tcp/443,1,4,1050
203.0.113.0/24,role=web,tcp/443,2,60,1050
legacy-01,role=db,tcp/5432,1,4,1020
role=app,role=db,tcp/5432 tcp/5433,2,127,1000
role=bastion,legacy-01,tcp/22,1,3,1010
role=bastion,role=app,tcp/22,2,6,1010
role=bastion,role=db,tcp/22,1,3,1010
role=bastion,role=mon,tcp/22,1,3,1010
role=bastion,role=web,tcp/22,2,6,1010
role=mon,legacy-01,tcp/9100,1,60,1030
role=mon,role=app,tcp/9100,2,120,1030
role=mon,role=bastion,tcp/9100,1,60,1030
role=mon,role=db,icmp tcp/9100,2,90,1030 1040
role=mon,role=web,tcp/9100,2,120,1030
role=web,role=app,tcp/8080 tcp/8443,3,80,1060
"""


@pytest.fixture(name="lab", scope="module")
def fixture_lab():
    with open(os.path.join(FIXTURES, "fleet.yml"), encoding="utf-8") as handle:
        hosts = yaml.safe_load(handle)["hosts"]
    with open(os.path.join(FIXTURES, "flows.csv"), encoding="utf-8") as handle:
        return discover(read_csv(handle), hosts, None, {"exclude": [{"ports": ["udp/5353"]}]})


def read(directory, name):
    with open(os.path.join(directory, name), encoding="utf-8") as handle:
        return handle.read()


def test_the_map_and_the_flows_as_csv_and_the_rest_as_json(lab, tmp_path):
    names, notes = write_report(lab, str(tmp_path), dot="/nonexistent/dot")
    assert names == ["discovery.json", "flows.csv", "map.csv", "map.dot", "proposal.yml"]
    assert notes[0].startswith("map.svg not drawn: /nonexistent/dot -Tsvg failed: ")
    assert read(tmp_path, "map.csv") == EXPECTED_MAP
    flows = read(tmp_path, "flows.csv").splitlines()
    assert flows[0] == "src,dst,service,connections,src_group,dst_group,rule"
    assert "web-01,app-02,tcp/8443,5,role=web,role=app,1060" in flows and len(flows) == 26
    assert json.loads(read(tmp_path, "discovery.json")) == json.loads(json.dumps(lab.to_data()))
    assert read(tmp_path, "proposal.yml") == lab.proposal.yaml
    assert '  "role=mon" -> "role=db" [label="icmp tcp/9100 (90)"];' in read(tmp_path, "map.dot").splitlines()
    assert all(stat.S_IMODE(os.stat(os.path.join(tmp_path, n)).st_mode) == 0o600 for n in names)


def test_without_graphviz_the_report_says_how_to_get_the_picture(lab, tmp_path, monkeypatch):
    monkeypatch.setattr(report_module.shutil, "which", lambda name: None)
    names, notes = write_report(lab, str(tmp_path))
    assert "map.svg" not in names
    assert notes == ["map.svg not drawn: Graphviz dot is not installed (Debian: apt-get install graphviz)"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot is not installed (make setup installs it)")
def test_with_graphviz_the_map_is_drawn(lab, tmp_path):
    names, notes = write_report(lab, str(tmp_path))
    assert "map.svg" in names and notes == []
    svg = read(tmp_path, "map.svg")
    assert "<svg" in svg and "role=web" in svg and "tcp/8080 tcp/8443 (80)" in svg
