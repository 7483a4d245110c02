"""Extra-network tags `<name:args>` (shared/A1111.md §3.5)."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.networks.syntax import ExtraNetworkParams, parse_prompt, parse_prompts

# (prompt, prompt without tags, {name: [items, ...]})
PARSE_CASES = [
    ("<lora:name:0.8>", "", {"lora": [["name", "0.8"]]}),
    ("a <lora:x> b", "a  b", {"lora": [["x"]]}),  # the spaces around a tag stay
    ("a,<lora:x>,b", "a,,b", {"lora": [["x"]]}),
    ("<lora:x:te=0.5:unet=1:dyn=8>", "", {"lora": [["x", "te=0.5", "unet=1", "dyn=8"]]}),
    # A1111's own example: every tag is removed, grouped by name in prompt order
    (
        "1girl, <hypernet:agm:1.1> <extrasupernet:master:12:13:14> <hypernet:ray>",
        "1girl,   ",
        {"hypernet": [["agm", "1.1"], ["ray"]], "extrasupernet": [["master", "12", "13", "14"]]},
    ),
    ("<lora:a::b>", "", {"lora": [["a", "", "b"]]}),
    ("<lora: spaced name :1>", "", {"lora": [[" spaced name ", "1"]]}),
    ("<lora:multi\nline>", "", {"lora": [["multi\nline"]]}),
    ("<lora:a<b:1>", "", {"lora": [["a<b", "1"]]}),
    ("<lora:a>b>", "b>", {"lora": [["a"]]}),
    ("<лора:x>", "", {"лора": [["x"]]}),  # \w is Unicode
    ("<lora_2:x>", "", {"lora_2": [["x"]]}),
    # not tags
    ("<x>", "<x>", {}),
    ("<lora:>", "<lora:>", {}),
    ("<my-net:a>", "<my-net:a>", {}),
    ("< lora:a>", "< lora:a>", {}),
    ("<lora :a>", "<lora :a>", {}),
    ("<:a>", "<:a>", {}),
    ("lora:a", "lora:a", {}),
    ("", "", {}),
    # removing one tag can leave another's pieces behind: one pass only
    ("<<lora:a>lora:b>", "<lora:b>", {"lora": [["a"]]}),
]


@pytest.mark.parametrize(("prompt", "expected_prompt", "expected_networks"), PARSE_CASES)
def test_parse_prompt(prompt, expected_prompt, expected_networks):
    stripped, networks = parse_prompt(prompt)
    assert stripped == expected_prompt
    assert {name: [params.items for params in found] for name, found in networks.items()} == expected_networks
    assert isinstance(networks, defaultdict) and networks["unmentioned"] == []


@pytest.mark.parametrize(
    ("items", "positional", "named"),
    [
        (["name", "0.8"], ["name", "0.8"], {}),
        (["x", "te=0.5", "unet=1"], ["x"], {"te": "0.5", "unet": "1"}),
        (["x", "a=b=c"], ["x", "a=b=c"], {}),  # two "=": positional
        (["=v", "k="], [], {"": "v", "k": ""}),
        (["x", "k=1", "k=2"], ["x"], {"k": "2"}),  # the last one wins
        ([1.5, "x"], [1.5, "x"], {}),  # non-strings (from code) are positional
        ([], [], {}),
        (None, [], {}),
    ],
)
def test_params_split_positional_and_named(items, positional, named):
    params = ExtraNetworkParams(items)
    assert params.items == (items or [])
    assert params.positional == positional
    assert params.named == named


def test_params_compare_by_items():
    assert ExtraNetworkParams(["a", "1"]) == ExtraNetworkParams(["a", "1"])
    assert ExtraNetworkParams(["a", "1"]) != ExtraNetworkParams(["a", "2"])
    assert ExtraNetworkParams() == ExtraNetworkParams([])
    assert ExtraNetworkParams(["a"]) != "a"
    assert ExtraNetworkParams(["a"]) != ["a"]
    assert repr(ExtraNetworkParams(["a", "k=v"])) == "ExtraNetworkParams(items=['a', 'k=v'])"
    with pytest.raises(TypeError):
        hash(ExtraNetworkParams(["a"]))


def test_parse_prompts_strips_every_prompt_but_returns_only_the_first_prompts_networks():
    stripped, networks = parse_prompts(["<lora:a:1> x", "<lora:b:0.5> y <hypernet:h>", "z"])
    assert stripped == [" x", " y ", "z"]
    assert networks == {"lora": [ExtraNetworkParams(["a", "1"])]}

    stripped, networks = parse_prompts(["x", "<lora:b:1> y"])
    assert stripped == ["x", " y"]
    assert networks == {}


def test_parse_prompts_of_an_empty_batch():
    stripped, networks = parse_prompts([])
    assert stripped == [] and networks == {} and networks["lora"] == []


def test_parse_prompts_rejects_a_bare_string():
    with pytest.raises(TypeError, match=r"pass \[prompt\]"):
        parse_prompts("<lora:a> x")


tag_soup = st.lists(
    st.sampled_from(list("<>:=a1 -_.\n") + ["lora", "<lora:", "hypernet", "é"]), max_size=40
).map("".join)


@settings(max_examples=300, deadline=None)
@given(prompt=tag_soup)
def test_every_tag_is_counted_and_removed(prompt):
    stripped, networks = parse_prompt(prompt)
    tags = re.findall(r"<(\w+):([^>]+)>", prompt)
    assert sum(len(found) for found in networks.values()) == len(tags)
    assert len(stripped) == len(prompt) - sum(len(name) + len(args) + 3 for name, args in tags)
    for found in networks.values():
        for params in found:
            assert len(params.positional) + len(params.named) <= len(params.items)
            assert all(isinstance(value, str) for value in params.named.values())
