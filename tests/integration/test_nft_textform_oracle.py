"""nft itself is the oracle of the text translator (plugins/module_utils/nft/textform.py): for real rendered rulesets
(``textform_corpus``: every construct the renderer writes), the text loaded by ``nft -f`` in one fresh network
namespace and the translator's JSON loaded by ``nft -j -f`` in another list byte for byte the same
(``nft -s list ruleset``), nft lists the text as exactly the translated document (so a later run's
``Nft.live_document`` recognises the table), and the product path (``Nft.judge``) takes the translation, with no
scratch parse, for every one of them. Nothing outside the namespaces made here is touched.
"""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                ".build", "collections"))

from netns import Fleet, available  # noqa: E402
from textform_corpus import corpus  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.nft import jsonform, textform  # noqa: E402
from ansible_collections.mseg.fleet.plugins.module_utils.nft.runner import Nft, find_nft  # noqa: E402

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

CORPUS = corpus()
# JSON keys and values whose presence in the translated corpus shows it exercises each construct the renderer writes.
CONSTRUCTS = ("vmap", "jump", "set", "ct count", "limit", "group", "concat", "prefix", "range", "icmpv6", "l4proto",
              "nfproto", "iif", "oif", "state", "counter", "drop", "accept", "daddr", "saddr", "dport", "interval",
              "size", "verdict", "ipv6_addr", "ipv4_addr", "inet_service", "elem", "comment", "policy")


@pytest.fixture(name="fleet", scope="module")
def fixture_fleet():
    with Fleet(["text", "json"], ipv6=False) as fleet:
        yield fleet


def translated(content):
    found = textform.objects(content, textform.protocol_names())
    assert found is not None, "the translator refused a rendered ruleset: the product path would parse it"
    return jsonform.transaction(jsonform.check(found, require_table=False, scratch=False))


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_translation_loads_the_very_table_the_text_loads(fleet, name):
    content = CORPUS[name]
    document = translated(content)
    fleet.run("text", ["nft", "-f", "-"], input=content)
    fleet.run("json", ["nft", "-j", "-f", "-"], input=document)
    from_text = fleet.run("text", ["nft", "-s", "list", "ruleset"]).stdout
    from_json = fleet.run("json", ["nft", "-s", "list", "ruleset"]).stdout
    assert "table inet mseg {" in from_text
    assert from_json == from_text
    # nft lists what it made of the text as the translated document, on either side: the engine's
    # "is the live table the document I loaded" (Nft.live_document) holds for a translated load.
    assert Nft(netns=fleet.ns("text")).live_document() == document
    assert Nft(netns=fleet.ns("json")).live_document() == document


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_product_path_takes_the_translation(name):
    release = textform.nft_release(subprocess.run([find_nft(), "--version"], capture_output=True, text=True,
                                                  check=True).stdout)
    if release not in textform.LISTED_BY:
        pytest.skip("nft %s is not in textform.LISTED_BY: the product path parses in a scratch namespace; add it "
                    "once the oracle test above passes with it" % release)
    calls = []

    def runner(argv, **kwargs):
        calls.append(argv)
        return subprocess.run(argv, **kwargs)  # pylint: disable=subprocess-run-check

    document = Nft(runner=runner).judge(CORPUS[name], require_table=True)
    assert document == translated(CORPUS[name])
    assert not [argv for argv in calls if "unshare" in os.path.basename(argv[0])], calls


def test_the_corpus_exercises_every_construct_the_renderer_writes():
    seen = set()

    def walk(value):
        if isinstance(value, dict):
            for key, inner in value.items():
                seen.add(key)
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)
        elif isinstance(value, str):
            seen.add(value)
    for content in CORPUS.values():
        walk(json.loads(translated(content)))
    assert not [construct for construct in CONSTRUCTS if construct not in seen]
