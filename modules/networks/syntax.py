"""A1111's extra-network tags in prompts: `<name:arg1:arg2:key=value>`.

`parse_prompt` removes every tag from a prompt and returns what they asked for, grouped by network
name (`lora`, `hypernet`, ...). Which prompts go through it is the caller's choice: A1111 strips
tags from positive prompts only, so a `<lora:...>` in a negative prompt stays there as plain text,
and the infotext keeps the tags (it is written from the prompts before stripping).

A tag is `<` + a name of word characters + `:` + at least one character other than `>` + `>`.
So `<x>`, `<lora:>` and `<my-net:a>` are not tags and stay in the prompt. The text after the
first colon is split on every `:`; an argument with exactly one `=` is named, any other
positional. The tag is replaced by nothing: the spaces around it stay (`"a <lora:x> b"` becomes
`"a  b"`).

Differences from A1111, both where A1111 would misbehave rather than answer:
- `parse_prompts([])` returns an empty mapping (A1111 returns None);
- comparing `ExtraNetworkParams` with anything else is `False` (A1111 raises AttributeError).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    """The arguments of one tag: `items` as written, split into `positional` and `named`.

    `<lora:name:0.8:unet=0.5>` gives items `["name", "0.8", "unet=0.5"]`, positional
    `["name", "0.8"]` and named `{"unet": "0.5"}`. Values stay strings: each network decides how to
    read them. Non-string items (from code, not prompts) are positional. Two params are equal when
    their items are; like A1111's, they are not hashable.
    """

    def __init__(self, items: list[Any] | None = None) -> None:
        self.items: list[Any] = items or []
        self.positional: list[Any] = []
        self.named: dict[str, str] = {}
        for item in self.items:
            # "a=b=c" (two "=") is positional, as in A1111.
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtraNetworkParams):
            return NotImplemented
        return self.items == other.items

    __hash__ = None  # equality follows the mutable `items` list

    def __repr__(self) -> str:
        return f"ExtraNetworkParams(items={self.items!r})"


def parse_prompt(prompt: str) -> tuple[str, defaultdict[str, list[ExtraNetworkParams]]]:
    """`prompt` without its tags, and name -> params of each tag with that name, in prompt order.

    The mapping is a `defaultdict(list)` as in A1111, so looking up an unmentioned name gives [].
    """
    found: defaultdict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def remove_tag(match: re.Match[str]) -> str:
        found[match.group(1)].append(ExtraNetworkParams(items=match.group(2).split(":")))
        return ""

    return _EXTRA_NETWORK_TAG.sub(remove_tag, prompt), found


def parse_prompts(prompts: Iterable[str]) -> tuple[list[str], defaultdict[str, list[ExtraNetworkParams]]]:
    """Every prompt without its tags, and the networks of the batch.

    A1111 quirk kept: the networks are those of the first prompt only (a batch is activated once),
    while tags are removed from every prompt; tags that only later prompts have are ignored.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of prompts, got one str; pass [prompt]")
    stripped: list[str] = []
    batch_networks: defaultdict[str, list[ExtraNetworkParams]] | None = None
    for prompt in prompts:
        without_tags, networks = parse_prompt(prompt)
        if batch_networks is None:
            batch_networks = networks
        stripped.append(without_tags)
    return stripped, batch_networks if batch_networks is not None else defaultdict(list)
