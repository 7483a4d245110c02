"""A1111's prompt language: schedules, alternation, AND weights and emphasis.

Expected values follow the rules in shared/A1111.md §3.2–3.4 and A1111's own doctests in its
`modules/prompt_parser.py`. The schedule cases were also checked against A1111's lark grammar run
through lark 1.1.2 (A1111's pinned version); where lark's answer depends on PYTHONHASHSEED the
case says so.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.generation.prompt_parser import (
    ComposablePromptPart,
    ScheduledPrompt,
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    parse_prompt_attention,
    schedule_composable_prompt,
    schedule_prompt,
    split_composable_prompt,
    text_at_step,
)

UP = 1.1
DOWN = 1 / 1.1

# (prompt, steps, expected schedule)
SCHEDULE_CASES = [
    # A1111's doctests (10 steps)
    ("test", 10, [[10, "test"]]),
    ("a [b:3]", 10, [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", 10, [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", 10, [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", 10, [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", 10, [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", 10, [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", 10, [[10, "a [unbalanced"]]),
    ("a [b:.5] c", 10, [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", 10, [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", 10, [[s, "a" if s % 2 else "(b:1.1)"] for s in range(1, 11)]),
    ("[fe|]male", 10, [[s, "female" if s % 2 else "male"] for s in range(1, 11)]),
    ("[fe|||]male", 10, [[s, "female" if s % 4 == 1 else "male"] for s in range(1, 11)]),
    # This doctest claims [[5, 'a  c'], [10, 'a {b|d{ c']], but A1111's own grammar rejects the
    # "|" outside an alternation, so A1111 uses the prompt unchanged.
    ("a [{b|d{:.5] c", 10, [[10, "a [{b|d{:.5] c"]]),
    # A1111's example in its module comment
    (
        (
            "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
            "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
        ),
        100,
        [
            [25, "fantasy landscape with a mountain and an oak in foreground shoddy"],
            [50, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
            [60, "fantasy landscape with a lake and an oak in foreground in background masterful"],
            [75, "fantasy landscape with a lake and an oak in background masterful"],
            [100, "fantasy landscape with a lake and a christmas tree in background masterful"],
        ],
    ),
    # A1111's txt2img API test prompt; 0.3 * 3 steps truncates to 0, so "to" from the start
    (
        "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]",
        3,
        [
            [1, "((emphasis)), (emphasis1:1.1), , from, to, alt"],
            [2, "((emphasis)), (emphasis1:1.1), to, from, to, alt1"],
            [3, "((emphasis)), (emphasis1:1.1), to, , to, alt"],
        ],
    ),
    # integers are steps, decimals fractions; when = min(steps, int(v)), kept only if >= 1
    ("[a:b:10]", 20, [[10, "a"], [20, "b"]]),
    ("[a:b:0.25]", 20, [[5, "a"], [20, "b"]]),
    ("[a:b:0]", 10, [[10, "b"]]),
    ("[a:b:0.0]", 10, [[10, "b"]]),
    ("[a:b:1.0]", 10, [[10, "a"]]),
    ("[a:b:1]", 10, [[1, "a"], [10, "b"]]),
    ("[a:b:15]", 10, [[10, "a"]]),
    ("[a:b:-3]", 10, [[10, "b"]]),
    ("[a:b:+3]", 10, [[3, "a"], [10, "b"]]),
    ("[a:b:0.99]", 10, [[9, "a"], [10, "b"]]),
    ("[a:b:5.]", 10, [[10, "a"]]),  # "5." has a point: 5 * 10 steps, capped
    ("[a:b:1e1]", 20, [[10, "a"], [20, "b"]]),  # no point: an absolute step
    ("[a:b:2.5e-1]", 20, [[5, "a"], [20, "b"]]),  # a point: a fraction
    ("[a:b:1e999]", 10, [[10, "a"]]),  # A1111 raises OverflowError here
    ("[a:b: 3 ]", 10, [[3, "a"], [10, "b"]]),
    ("[a:b:\t3\n]", 10, [[3, "a"], [10, "b"]]),
    # the three-part and the two shorthand forms
    ("[:b:3]", 10, [[3, ""], [10, "b"]]),
    ("[a::3]", 10, [[3, "a"], [10, ""]]),
    ("[a:3]", 10, [[3, ""], [10, "a"]]),
    ("[:3]", 10, [[3, ""], [10, ""]]),
    # not schedules
    ("[a:b]", 10, [[10, "[a:b]"]]),
    ("[a:b:]", 10, [[10, "[a:b:]"]]),
    ("[a:b:3x]", 10, [[10, "[a:b:3x]"]]),
    ("[a:b:1e]", 10, [[10, "[a:b:1e]"]]),
    ("[a:b:c:3]", 10, [[10, "[a:b:c:3]"]]),
    ("[a|b:3]", 10, [[10, "[a|b:3]"]]),
    ("(a:b:3)", 10, [[10, "(a:b:3)"]]),
    # nesting
    ("[[a:b:5]:c:10]", 20, [[5, "a"], [10, "b"], [20, "c"]]),
    ("[a:[b:c:2]:1]", 10, [[1, "a"], [2, "b"], [10, "c"]]),
    ("[[a|b]:c:3]", 4, [[1, "a"], [2, "b"], [3, "a"], [4, "c"]]),
    ("[[a:b:2]|c]", 4, [[1, "a"], [2, "c"], [3, "b"], [4, "c"]]),
    ("[(x:1.2)|[y]]", 2, [[1, "(x:1.2)"], [2, "[y]"]]),
    # a schedule inside an option that a step does not use still adds its boundary
    ("[[a:b:7]|c]", 3, [[1, "a"], [2, "c"], [3, "a"]]),
    # alternation: every step is a boundary, empty options count
    ("[a|b|c]", 5, [[1, "a"], [2, "b"], [3, "c"], [4, "a"], [5, "b"]]),
    ("[a||b]", 4, [[1, "a"], [2, ""], [3, "b"], [4, "a"]]),
    ("[|]", 2, [[1, ""], [2, ""]]),
    ("x [a|b]", 1, [[1, "x a"]]),
    # escapes are text for the scheduler (the emphasis parser reads them later)
    (r"\[a:b:3\]", 10, [[10, r"\[a:b:3\]"]]),
    (r"[a\:b:c:3]", 10, [[3, r"a\:b"], [10, "c"]]),
    (r"[a\|b|c]", 2, [[1, r"a\|b"], [2, "c"]]),
    # stray brackets and colons are literal at the top level only
    ("a]b)c:d [x:y:2]", 10, [[2, "a]b)c:d x"], [10, "a]b)c:d y"]]),
    ("[[a:b:3]", 10, [[3, "[a"], [10, "[b"]]),
    ("(a:b:c) [x:y:3]", 10, [[3, "(a:b:c) x"], [10, "(a:b:c) y"]]),
    # Where a construct is followed by a stray bracket or colon, A1111's lark parser picks
    # between reading it and leaving it literal by Python set order (PYTHONHASHSEED), so A1111
    # answers differently between restarts; Atelier always reads the construct.
    ("[a:b:3]]", 10, [[3, "a]"], [10, "b]"]]),
    ("photo of [cat:dog:5]: detailed", 10, [[5, "photo of cat: detailed"], [10, "photo of dog: detailed"]]),
    # anything the grammar rejects: the whole prompt, unchanged, for every step
    ("a|b [c:d:5]", 10, [[10, "a|b [c:d:5]"]]),
    ("[a:b:5] (c|d)", 10, [[10, "[a:b:5] (c|d)"]]),
    ("[a:b:5] x\\", 10, [[10, "[a:b:5] x\\"]]),
    ("[a:b:5] x\\\ny", 10, [[10, "[a:b:5] x\\\ny"]]),
    ("[a:b:5]\\\\", 10, [[5, "a\\\\"], [10, "b\\\\"]]),  # an escaped backslash is fine
    # AND is not split here
    ("a AND [b:c:2]", 10, [[2, "a AND b"], [10, "a AND c"]]),
    ("", 10, [[10, ""]]),
]


@pytest.mark.parametrize(("prompt", "steps", "expected"), SCHEDULE_CASES)
def test_schedules(prompt, steps, expected):
    assert get_learned_conditioning_prompt_schedules([prompt], steps) == [expected]
    assert schedule_prompt(prompt, steps) == tuple(ScheduledPrompt(end, text) for end, text in expected)


# (prompt, base_steps, hires_steps, use_old_scheduling, expected)
TIMING_CASES = [
    # hires pass: integers count from the first pass's start, decimals in whole passes
    ("[a:b:20]", 30, 20, False, [[20, "b"]]),
    ("[a:b:40]", 30, 20, False, [[10, "a"], [20, "b"]]),
    ("[a:b:1.5]", 30, 20, False, [[10, "a"], [20, "b"]]),
    ("[a:b:0.5]", 30, 20, False, [[20, "b"]]),
    ("[a:b:2.0]", 30, 20, False, [[20, "a"]]),
    ("[a|b]", 30, 3, False, [[1, "a"], [2, "b"], [3, "a"]]),
    # A1111's hires doctests
    ("a [b:.5] c", 10, 10, False, [[10, "a b c"]]),
    ("a [b:1.5] c", 10, 10, False, [[5, "a  c"], [10, "a b c"]]),
    # old timelines: below 1 a fraction, otherwise a step, whatever the text looks like
    ("[a:b:0.5]", 10, None, True, [[5, "a"], [10, "b"]]),
    ("[a:b:1.0]", 10, None, True, [[1, "a"], [10, "b"]]),
    ("[a:b:3]", 10, None, True, [[3, "a"], [10, "b"]]),
    ("[a:b:-0.5]", 10, None, True, [[10, "b"]]),
    ("[a:b:1e999]", 10, None, True, [[10, "a"]]),
    # ...and ignore the hires pass: no offsets, and the schedule spans the base steps
    ("[a:b:3]", 10, 20, True, [[3, "a"], [10, "b"]]),
    ("[a:b:0.5]", 10, 20, True, [[5, "a"], [10, "b"]]),
]


@pytest.mark.parametrize(("prompt", "base", "hires", "old", "expected"), TIMING_CASES)
def test_schedule_timing(prompt, base, hires, old, expected):
    assert get_learned_conditioning_prompt_schedules([prompt], base, hires, old) == [expected]
    assert get_learned_conditioning_prompt_schedules(
        [prompt], base, hires_steps=hires, use_old_scheduling=old
    ) == [expected]


def test_schedules_for_a_batch_are_independent_lists():
    schedules = get_learned_conditioning_prompt_schedules(["[a:b:2]", "x", "[a:b:2]"], 4)
    assert schedules == [[[2, "a"], [4, "b"]], [[4, "x"]], [[2, "a"], [4, "b"]]]
    schedules[0][0][1] = "changed"
    assert schedules[2][0][1] == "a"


def test_nesting_deeper_than_the_python_stack_parses():
    depth = 5000
    emphasised = "[" * depth + "a" + "]" * depth
    assert get_learned_conditioning_prompt_schedules([emphasised + " [b:c:2]"], 10) == [
        [[2, emphasised + " b"], [10, emphasised + " c"]]
    ]
    scheduled = "[" * depth + "a" + ":1]" * depth
    assert get_learned_conditioning_prompt_schedules([scheduled], 3) == [[[1, ""], [3, "a"]]]


def test_many_unclosed_brackets_parse_quickly():
    # a parser that retried every "[" from scratch would take minutes here
    literal = "[x (" * 20000 + " "
    schedules = get_learned_conditioning_prompt_schedules([literal + "[a:b:2]"], 4)
    assert schedules == [[[2, literal + "a"], [4, literal + "b"]]]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: get_learned_conditioning_prompt_schedules("a [b:c:2]", 10), TypeError, "pass \\[prompt\\]"),
        (lambda: get_multicond_prompt_list("a AND b"), TypeError, "pass \\[prompt\\]"),
        (lambda: schedule_prompt("a", 0), ValueError, "base_steps must be at least 1, got 0"),
        (lambda: schedule_prompt("a", 10, hires_steps=0), ValueError, "hires_steps must be at least 1"),
        (lambda: schedule_prompt("a", 2.5), TypeError, "base_steps must be an integer"),
    ],
)
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_text_at_step_uses_the_first_entry_that_has_not_ended():
    schedule = schedule_prompt("[a:b:2]", 4)
    assert [text_at_step(schedule, step) for step in range(6)] == ["a", "a", "a", "b", "b", "b"]


# ---------------------------------------------------------------------------------------------
# AND

# (prompt, [(text, weight), ...])
AND_CASES = [
    ("(a:1.2) AND b:0.5", [("(a:1.2)", 1.0), (" b", 0.5)]),
    ("a", [("a", 1.0)]),
    ("a:1.5", [("a", 1.5)]),  # a weight even without AND
    ("a : 1.5 ", [("a", 1.5)]),
    ("  a  ", [("  a", 1.0)]),  # leading whitespace stays, trailing goes
    ("a:1.", [("a", 1.0)]),
    ("a:.5", [("a", 0.5)]),
    ("a:-1", [("a", -1.0)]),
    ("a:+2", [("a", 2.0)]),
    ("a:1e2", [("a:1e2", 1.0)]),  # no exponents
    ("a:", [("a:", 1.0)]),
    ("a:1:2", [("a:1", 2.0)]),
    ("[a:b:5", [("[a:b", 5.0)]),  # the weight is read before prompt editing
    ("[a:b:5]", [("[a:b:5]", 1.0)]),
    ("a and b", [("a and b", 1.0)]),  # case-sensitive
    ("ANDROID BRAND", [("ANDROID BRAND", 1.0)]),  # whole words only
    ("a ANDb", [("a ANDb", 1.0)]),
    ("a AND b AND c:2", [("a", 1.0), (" b", 1.0), (" c", 2.0)]),
    ("aANDb", [("aANDb", 1.0)]),
    ("a,AND,b", [("a,", 1.0), (",b", 1.0)]),
    ("AND", [("", 1.0), ("", 1.0)]),
    ("a\nb:2", [("a\nb", 2.0)]),
    ("[a AND b:c:5]", [("[a", 1.0), (" b:c:5]", 1.0)]),
]


@pytest.mark.parametrize(("prompt", "expected"), AND_CASES)
def test_and_split_and_weights(prompt, expected):
    assert split_composable_prompt(prompt) == expected


def test_multicond_prompt_list_deduplicates_texts_across_the_batch():
    res_indexes, flat, indexes = get_multicond_prompt_list(["(a:1.2) AND b:0.5", "b AND b :2 AND c", "b"])
    assert flat == ["(a:1.2)", " b", "b", " c"]
    assert indexes == {"(a:1.2)": 0, " b": 1, "b": 2, " c": 3}
    assert res_indexes == [[(0, 1.0), (1, 0.5)], [(2, 1.0), (1, 2.0), (3, 1.0)], [(2, 1.0)]]


def test_composable_schedule_gives_each_part_its_weight_and_schedule():
    assert schedule_composable_prompt("(a:1.2) AND [b:c:0.5]:0.5", 10) == (
        ComposablePromptPart("(a:1.2)", 1.0, (ScheduledPrompt(10, "(a:1.2)"),)),
        ComposablePromptPart(" [b:c:0.5]", 0.5, (ScheduledPrompt(5, " b"), ScheduledPrompt(10, " c"))),
    )
    hires = schedule_composable_prompt("[a:b:1.5] AND c", 10, hires_steps=4)
    assert [part.schedule for part in hires] == [
        (ScheduledPrompt(2, "a"), ScheduledPrompt(4, "b")),
        (ScheduledPrompt(4, " c"),),
    ]


# ---------------------------------------------------------------------------------------------
# Emphasis

# (text, expected); weights are written as the products A1111 computes, in its order
ATTENTION_CASES = [
    # A1111's doctests
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", UP], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", UP]]),
    (r"\(literal\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", UP]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.5730000000000004],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641000000000006],
            [".", 1.1],
        ],
    ),
    # multipliers and nesting
    ("[x]", [["x", DOWN]]),
    ("(x:1.5)", [["x", 1.5]]),
    ("(x: 1.5 )", [["x", 1.5]]),
    ("(x:-1)", [["x", -1.0]]),
    ("(x:+.5)", [["x", 0.5]]),
    ("(x:0)", [["x", 0.0]]),
    ("((a:1.2):1.1)", [["a", 1.0 * 1.2 * 1.1]]),
    ("((a))", [["a", 1.0 * UP * UP]]),
    ("[[a]]", [["a", 1.0 * DOWN * DOWN]]),
    ("([a])", [["a", 1.0 * DOWN * UP]]),
    ("(a [b] c)", [["a ", UP], ["b", DOWN * UP], [" c", UP]]),
    # escapes; a backslash before anything else is dropped
    (r"\(a\)", [["(a)", 1.0]]),
    (r"\[a\]", [["[a]", 1.0]]),
    ("a\\\\b", [["a\\b", 1.0]]),
    (r"a\b", [["ab", 1.0]]),
    (r"(a\)", [["a)", UP]]),
    # the dropped backslash leaves an empty run, visible when nothing else has its weight
    ("[\\", [["", DOWN]]),
    # unclosed groups close at the end: all round ones first, then square ones
    ("(a [b", [["a ", UP], ["b", 1.0 * UP * DOWN]]),
    ("[a (b", [["a ", DOWN], ["b", 1.0 * UP * DOWN]]),
    # stray closers and colons are text
    ("a)b]c", [["a)b]c", 1.0]]),
    ("a:b", [["a:b", 1.0]]),
    ("a:1.2)", [["a:1.2)", 1.0]]),
    ("[x:1.5]", [["x:1.5", DOWN]]),  # square brackets take no weight
    ("(a:1e2)", [["a:1e2", UP]]),  # not a weight
    ("(a:1.2.3)", [["a:1.2.3", UP]]),  # A1111 raises ValueError here
    ("(a:.)", [["a:.", UP]]),  # A1111 raises ValueError here
    ("(a:b:1.2)", [["a:b", 1.2]]),
    # BREAK
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("a\nBREAK\tb", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("BREAK", [["", 1.0], ["BREAK", -1], ["", 1.0]]),
    ("a BREAK BREAK b", [["a", 1.0], ["BREAK", -1], ["", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("aBREAK b", [["aBREAK b", 1.0]]),
    ("a break b", [["a break b", 1.0]]),
    ("(a) BREAK [b]", [["a", UP], ["", 1.0], ["BREAK", -1], ["", 1.0], ["b", DOWN]]),
    # the quirk: inside a group the marker is multiplied too, so it is no longer -1
    ("(a BREAK b)", [["a", UP], ["BREAK", -1 * UP], ["b", UP]]),
    ("[a BREAK b]", [["a", DOWN], ["BREAK", -1 * DOWN], ["b", DOWN]]),
    ("(BREAK:0)", [["BREAK", 0.0]]),  # 0, -0.0 and 0 are equal weights and merge
    # empty
    ("", [["", 1.0]]),
    ("()", [["", 1.0]]),
    ("[]", [["", 1.0]]),
]


@pytest.mark.parametrize(("text", "expected"), ATTENTION_CASES)
def test_parse_prompt_attention(text, expected):
    # repr() compares floats exactly, and tells -0.0 from 0.0
    assert repr(parse_prompt_attention(text)) == repr(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(a) [b:2] \\(c\\)", [["(a) [b:2] \\(c\\)", 1.0]]),
        ("(a BREAK b)", [["(a", 1.0], ["BREAK", -1], ["b)", 1.0]]),
        ("BREAK", [["", 1.0], ["BREAK", -1], ["", 1.0]]),
        ("", [["", 1.0]]),
    ],
)
def test_attention_disabled_keeps_brackets_but_honours_break(text, expected):
    assert parse_prompt_attention(text, enabled=False) == expected


# ---------------------------------------------------------------------------------------------
# Properties over random prompt soup

SOUP_PIECES = list("[]():|\\ ,.0123456789ab") + ["AND", " AND ", "BREAK", " BREAK ", "\n"]
# At most 60 pieces: weights then have at most 60 digits and 60 nesting levels, so every product
# of them is a finite float.
prompt_soup = st.lists(st.sampled_from(SOUP_PIECES), max_size=60).map("".join)
SOUP_SETTINGS = settings(max_examples=300, deadline=None)


@SOUP_SETTINGS
@given(
    prompt=prompt_soup,
    base_steps=st.integers(1, 40),
    hires_steps=st.one_of(st.none(), st.integers(1, 40)),
    use_old_scheduling=st.booleans(),
)
def test_schedules_are_never_empty_and_end_at_the_pass_length(
    prompt, base_steps, hires_steps, use_old_scheduling
):
    [schedule] = get_learned_conditioning_prompt_schedules(
        [prompt], base_steps, hires_steps, use_old_scheduling
    )
    ends = [end for end, _ in schedule]
    assert ends and all(isinstance(end, int) and end >= 1 for end in ends)
    assert all(a < b for a, b in itertools.pairwise(ends))
    steps = base_steps if hires_steps is None or use_old_scheduling else hires_steps
    assert ends[-1] == steps
    assert all(isinstance(text, str) for _, text in schedule)
    if not set(prompt) & set("[]"):  # nothing to edit: the prompt itself
        assert schedule == [[steps, prompt]]


@SOUP_SETTINGS
@given(prompts=st.lists(prompt_soup, min_size=1, max_size=3))
def test_multicond_indexes_point_at_distinct_texts(prompts):
    res_indexes, flat, indexes = get_multicond_prompt_list(prompts)
    assert len(res_indexes) == len(prompts)
    assert len(set(flat)) == len(flat)
    assert indexes == {text: i for i, text in enumerate(flat)}
    for prompt, parts in zip(prompts, res_indexes):
        assert len(parts) == len(re.split(r"\bAND\b", prompt))
        assert all(0 <= index < len(flat) and math.isfinite(weight) for index, weight in parts)


@SOUP_SETTINGS
@given(text=prompt_soup, enabled=st.booleans())
def test_attention_weights_are_finite(text, enabled):
    parsed = parse_prompt_attention(text, enabled)
    assert parsed
    for run_text, weight in parsed:
        assert isinstance(run_text, str)
        assert isinstance(weight, (int, float)) and math.isfinite(weight)
    for left, right in itertools.pairwise(parsed):
        assert left[1] != right[1]  # equal neighbours were merged
    if not set(text) & set("()[]\\"):
        assert "".join(run for run, weight in parsed if not (run == "BREAK" and weight == -1)) == re.sub(
            r"\s*\bBREAK\b\s*", "", text
        )
