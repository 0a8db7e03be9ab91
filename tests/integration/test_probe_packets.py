"""The prober against a real ruleset: a packet the sender's own ruleset drops on its way out is reported dropped."""

import os
import subprocess
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import available  # noqa: E402 pylint: disable=wrong-import-position

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
EGRESS_DROP = """table inet mseg_probe_test {
  chain output {
    type filter hook output priority 0; policy accept;
    udp dport 53 drop
  }
}
"""
PROBE = """import sys
sys.path.insert(0, %r)
from ansible_collections.mseg.fleet.plugins.module_utils.host import probe
print(probe.probe_udp("10.99.0.1", 53, 1.0)[0], probe.probe_udp("10.99.0.1", 54, 1.0)[0])
""" % COLLECTIONS


@pytest.fixture(name="namespace")
def fixture_namespace():
    name = "mseg-probe-%s" % uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "address", "add", "10.99.0.1/32", "dev", "lo"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=EGRESS_DROP, text=True, check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_udp_packet_the_senders_ruleset_drops_is_a_drop_not_a_failure(namespace):
    """The lab's reachability matrix probes udp/53; under enforce a denied egress made the send fail with EPERM,
    which failed the probe task instead of counting the flow as dropped."""
    proc = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", PROBE], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["timeout", "refused"]
