"""The prompt token counters: A1111's count per 75-token chunk, without a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from modules.generation.conditioning import ConditioningOptions
from modules.ui.token_counter import TokenCounter, format_token_count


@pytest.fixture(scope="module")
def counter():
    return TokenCounter()


def test_empty_and_short_prompts(counter):
    assert counter.count("") == (0, 75)
    assert counter.count("cat") == (1, 75)
    assert counter.count("cat dog") == (2, 75)


def test_long_prompt_spills_into_a_second_chunk(counter):
    assert counter.count("cat " * 80) == (80, 150)
    assert counter.count("cat " * 75) == (75, 75)
    assert counter.count("cat " * 151) == (151, 225)


def test_break_closes_a_chunk(counter):
    assert counter.count("cat BREAK dog") == (76, 150)


def test_extra_network_tags_do_not_count(counter):
    assert counter.count("cat <lora:some_style:0.8> <hypernet:x:1>") == (1, 75)


def test_longest_prompt_editing_variant_counts(counter):
    assert counter.count("[cat:dog dog dog:5]", steps=20) == (3, 75)
    assert counter.count("[cat|dog dog dog]", steps=20) == (3, 75)


def test_and_splits_the_positive_prompt_only(counter):
    assert counter.count("cat AND dog dog") == (2, 75)
    assert counter.count("cat AND dog dog", is_positive=False) == (4, 75)  # "and" is a word there


def test_embeddings_count_as_their_vectors(counter):
    embedding = SimpleNamespace(vector_count=6)
    assert counter.count("cat myembedding", embeddings={"myembedding": embedding}) == (7, 75)
    assert counter.count("cat myembedding") == (1 + counter.count("myembedding")[0], 75)


def test_emphasis_none_counts_brackets_as_text(counter):
    plain = counter.count("(cat)")
    literal = counter.count("(cat)", options=ConditioningOptions(emphasis="None"))
    assert plain == (1, 75) and literal[0] > 1


def test_format():
    assert format_token_count(3, 75) == "<span class='token-counter'>3/75</span>"
    assert "over" in format_token_count(80, 150) and "80/150" in format_token_count(80, 150)
