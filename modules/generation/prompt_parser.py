"""A1111's prompt language: prompt editing, alternation, AND (composable diffusion) and emphasis.

Everything here is a pure function of its arguments; nothing touches a model. The functions that
extensions import from A1111's `modules.generation.prompt_parser` keep their names, arguments and list-shaped
results:

- `get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None,
  use_old_scheduling=False)` -> per prompt `[[end_at_step, text], ...]`;
- `get_multicond_prompt_list(prompts)` -> `(res_indexes, prompt_flat_list, prompt_indexes)`;
- `parse_prompt_attention(text)` -> `[[text, weight], ...]`.

Atelier's own code uses the typed helpers: `schedule_prompt` (one prompt, no AND, as for negative
prompts), `schedule_composable_prompt` (AND parts with weights and schedules, for positive
prompts), `text_at_step`, and `parse_prompt_attention(text, enabled=False)` for the `emphasis`
setting "None".

Prompt editing grammar (A1111 states it as a lark grammar; it is parsed here by hand, accepting and
rejecting the same strings and choosing the same reading of ambiguous ones):

    start     := (prompt | one of "[", "]", "(", ")", ":")*        # stray brackets are literal
    prompt    := (emphasized | scheduled | alternate | plain)*
    emphasized:= "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"   # kept as text here
    scheduled := "[" [prompt ":"] prompt ":" WS? NUMBER WS? "]"
    alternate := "[" prompt ("|" [prompt])+ "]"
    plain     := (any character but \\ [ ] ( ) : |  or  "\\" + any character but a newline)+
    NUMBER    := [+-]? (digits ["." [digits]] | "." digits) [("e"|"E") [+-]? digits]

Consequences worth knowing: inside a bracket construct every nested bracket must be a construct
too; only at the top level can a bracket or colon stand alone. A `|` outside an alternation, or a
backslash at the very end or before a newline, makes the whole prompt unparseable, and an
unparseable prompt is used unchanged for every step. `[a:b]` (no number) is not a schedule.

Where a bracket can be read either as a construct or as literal text, the construct wins. That is
lark's reading whenever the prompt has no stray bracket or colon at the top level (`[a:[b:c:1]:2]`
is a nested schedule). Next to stray ones (`[a:b:3]]`, `[cat:dog:5]: x`) A1111's lark
(Earley, ambiguity="resolve") breaks the tie by Python set order, which follows PYTHONHASHSEED, so
A1111 reads such a prompt differently from one start to the next; the construct is one of its
readings, and here it is the only one.

Known differences from A1111, all on inputs where A1111 raises instead of answering:
- a prompt-editing number too large for a float (`[a:b:1e999]`) ends at the last step instead
  of raising OverflowError;
- an emphasis weight that is not a number (`(a:1.2.3)`, `(a:.)`) or not finite is not a weight:
  the text reads `a:1.2.3` at 1.1, as `(a:1e2)` does; A1111 raises ValueError;
- brackets nested too deep for Python's stack are parsed like any others (A1111's tree
  transformer raises RecursionError);
- a bare `str` where a list of prompts is expected raises TypeError instead of being read as a
  list of one-character prompts;
- step counts below 1 raise ValueError (A1111 returns schedules ending at step 0 or below).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

ROUND_BRACKET_MULTIPLIER = 1.1
# Kept as A1111 computes it (a product with 1/1.1, not a division by 1.1) so that weights match
# A1111's bit for bit.
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1

# A BREAK marker in `parse_prompt_attention` results: text "BREAK" with exactly this weight.
BREAK_WEIGHT = -1


class ScheduledPrompt(NamedTuple):
    """The text to condition on for every sampling step up to and including `end_at_step`."""

    end_at_step: int
    text: str


class ScheduledPromptConditioning(NamedTuple):
    """A1111's name for an encoded `ScheduledPrompt`: `cond` is whatever the text encoder gave."""

    end_at_step: int
    cond: Any


@dataclass(frozen=True)
class ComposablePromptPart:
    """One `AND` part of a prompt: its text (weight removed), its weight, and its schedule."""

    text: str
    weight: float
    schedule: tuple[ScheduledPrompt, ...]


class SdConditioning(list):
    """A1111's list of prompts that also says what they are for: `is_negative_prompt` and the image
    size (`width`, `height`), copied from `copy_from` unless given (extensions build one to encode
    prompts with `shared.sd_model.get_learned_conditioning`)."""

    def __init__(self, prompts, is_negative_prompt: bool = False, width: int | None = None,
                 height: int | None = None, copy_from=None):
        super().__init__(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


class PromptSyntaxError(ValueError):
    """The prompt-editing grammar does not accept a prompt (callers then use the prompt as is)."""


# ---------------------------------------------------------------------------------------------
# Prompt editing and alternation


@dataclass(frozen=True)
class _Scheduled:
    """`[before:after:number]`; `before` is None for the two-part form `[after:number]`."""

    before: tuple[_Node, ...] | None
    after: tuple[_Node, ...]
    number: str


@dataclass(frozen=True)
class _Alternate:
    """`[a|b|...]`; an empty option is an empty tuple."""

    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Scheduled | _Alternate

# lark's `plain` terminal: `.` deliberately does not match a newline, so "\\\n" is a syntax error.
_PLAIN_TEXT = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
# lark's SIGNED_NUMBER with optional whitespace around it: what follows a schedule's last colon.
# ASCII digits only, like lark's DIGIT.
_SCHEDULE_NUMBER = re.compile(r"\s*(?P<number>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*")


@dataclass
class _OpenBracket:
    """A `[` or `(` read so far: its content split at its separators (":" or "|", one kind)."""

    bracket: str
    segments: list[list[_Node]]
    separator: str | None = None
    last_separator_position: int = -1

    def add_separator(self, char: str, position: int) -> bool:
        """Record a ":" or "|"; False if no construct of this bracket can have it here."""
        if self.bracket == "(":
            allowed = char == ":" and self.separator is None
        elif char == ":":
            allowed = self.separator in (None, ":") and len(self.segments) < 3
        else:
            allowed = self.separator in (None, "|")
        if allowed:
            self.separator = char
            self.last_separator_position = position
            self.segments.append([])
        return allowed

    def close(self, char: str, position: int, text: str) -> list[_Node] | None:
        """The nodes this bracket makes when `char` at `position` closes it, or None if it cannot."""
        first = self.segments[0]
        if self.bracket == "(":
            if char != ")":
                return None
            if self.separator is None:
                return ["(", *first, ")"]
            return ["(", *first, ":", *self.segments[1], ")"]
        if char != "]":
            return None
        if self.separator is None:
            return ["[", *first, "]"]
        if self.separator == "|":
            return [_Alternate(tuple(tuple(segment) for segment in self.segments))]
        # A schedule: the text after the last colon must be a number (no brackets, no escapes).
        number = _SCHEDULE_NUMBER.fullmatch(text, self.last_separator_position + 1, position)
        if number is None:
            return None
        if len(self.segments) == 2:
            return [_Scheduled(None, tuple(first), number["number"])]
        return [_Scheduled(tuple(first), tuple(self.segments[1]), number["number"])]

    def as_literal_text(self) -> list[_Node]:
        nodes: list[_Node] = [self.bracket]
        for index, segment in enumerate(self.segments):
            if index:
                nodes.append(self.separator)
            nodes.extend(segment)
        return nodes


def _parse_schedule_grammar(text: str) -> list[_Node]:
    """Parse a prompt into text and schedule/alternation nodes; PromptSyntaxError if lark would fail.

    One left-to-right pass with a stack of open brackets. Inside a bracket everything must be
    well formed, so the first character that an open bracket cannot take (a wrong closer, a
    separator it cannot have, the end of the text) means no open bracket can become a construct:
    they all turn into literal text at the top level, where that character is read again. Brackets
    that did close keep their reading, which is lark's "construct wins".
    """
    top: list[_Node] = []
    open_brackets: list[_OpenBracket] = []
    pos = 0
    while True:
        char = text[pos] if pos < len(text) else ""  # "" is the end of the text
        if char in ("[", "("):
            open_brackets.append(_OpenBracket(char, [[]]))
            pos += 1
        elif char and char not in "]):|":
            match = _PLAIN_TEXT.match(text, pos)
            if match is None:  # only a backslash with nothing it could escape gets here
                raise PromptSyntaxError(f"backslash at position {pos} escapes nothing")
            (open_brackets[-1].segments[-1] if open_brackets else top).append(match.group())
            pos = match.end()
        elif open_brackets:
            if _innermost_takes(open_brackets, top, char, pos, text):
                pos += 1
                continue
            for bracket in open_brackets:
                if bracket.separator == "|":
                    where = bracket.last_separator_position
                    raise PromptSyntaxError(f"'|' outside an alternation at position {where}")
                top.extend(bracket.as_literal_text())
            open_brackets.clear()  # and read `char` again, now at the top level
        elif char == "|":
            raise PromptSyntaxError(f"'|' outside an alternation at position {pos}")
        elif char:
            top.append(char)  # a stray "]", ")" or ":" is literal at the top level
            pos += 1
        else:
            return top


def _innermost_takes(
    open_brackets: list[_OpenBracket], top: list[_Node], char: str, pos: int, text: str
) -> bool:
    """Let the innermost open bracket take a separator or its closer; False if it cannot."""
    innermost = open_brackets[-1]
    if char in (":", "|"):
        return innermost.add_separator(char, pos)
    if not char:
        return False
    closed = innermost.close(char, pos, text)
    if closed is None:
        return False
    open_brackets.pop()
    (open_brackets[-1].segments[-1] if open_brackets else top).extend(closed)
    return True


@dataclass(frozen=True)
class _StepTiming:
    """How a schedule's NUMBER becomes the last step of its first text, for one sampling pass."""

    steps: int
    int_offset: int
    float_offset: float
    use_old_scheduling: bool

    @classmethod
    def for_pass(cls, base_steps: int, hires_steps: int | None, use_old_scheduling: bool) -> _StepTiming:
        # The old timeline ignores the hires pass entirely: it counts in base steps, no offsets.
        if hires_steps is None or use_old_scheduling:
            return cls(base_steps, 0, 0.0, use_old_scheduling)
        # In the hires pass an integer counts steps of both passes together and a decimal counts
        # whole passes, so 1.5 is half-way through hires.
        return cls(hires_steps, base_steps, 1.0, False)

    def end_step(self, number: str) -> int:
        value = float(number)
        if self.use_old_scheduling:
            value = value * self.steps if value < 1 else value
        elif "." in number:
            value = (value - self.float_offset) * self.steps
        else:
            value = value - self.int_offset
        if value >= self.steps:  # also catches inf, which int() cannot convert
            return self.steps
        if value == -math.inf:
            return 0
        return int(value)


def _constructs(nodes: Sequence[_Node]) -> Iterator[_Scheduled | _Alternate]:
    """Every schedule and alternation, at any depth and in every option (iterative: prompts may
    nest deeper than Python's recursion limit)."""
    pending = [nodes]
    while pending:
        for node in pending.pop():
            if isinstance(node, _Scheduled):
                yield node
                pending.extend([node.before or (), node.after])
            elif isinstance(node, _Alternate):
                yield node
                pending.extend(node.options)


def _step_boundaries(nodes: Sequence[_Node], timing: _StepTiming) -> list[int]:
    # Every schedule counts, even one inside an alternation option that some steps do not use.
    boundaries = {timing.steps}
    for node in _constructs(nodes):
        if isinstance(node, _Alternate):
            boundaries.update(range(1, timing.steps + 1))
        else:
            end = timing.end_step(node.number)
            if end >= 1:
                boundaries.add(end)
    return sorted(boundaries)


def _render(nodes: Sequence[_Node], step: int, timing: _StepTiming) -> str:
    pieces: list[str] = []
    pending = [iter(nodes)]
    while pending:
        for node in pending[-1]:
            if isinstance(node, str):
                pieces.append(node)
                continue
            if isinstance(node, _Scheduled):
                chosen = (node.before or ()) if step <= timing.end_step(node.number) else node.after
            else:
                chosen = node.options[(step - 1) % len(node.options)]
            pending.append(iter(chosen))
            break
        else:
            pending.pop()
    return "".join(pieces)


def _validated_steps(name: str, steps: Any) -> int:
    try:
        steps = operator.index(steps)
    except TypeError:
        raise TypeError(f"{name} must be an integer number of sampling steps, got {steps!r}") from None
    if steps < 1:
        raise ValueError(f"{name} must be at least 1, got {steps}")
    return steps


def _timing(base_steps: Any, hires_steps: Any, use_old_scheduling: bool) -> _StepTiming:
    base_steps = _validated_steps("base_steps", base_steps)
    if hires_steps is not None:
        hires_steps = _validated_steps("hires_steps", hires_steps)
    return _StepTiming.for_pass(base_steps, hires_steps, bool(use_old_scheduling))


def _schedule(prompt: str, timing: _StepTiming) -> tuple[ScheduledPrompt, ...]:
    try:
        nodes = _parse_schedule_grammar(prompt)
    except PromptSyntaxError:
        return (ScheduledPrompt(timing.steps, prompt),)
    return tuple(
        ScheduledPrompt(step, _render(nodes, step, timing)) for step in _step_boundaries(nodes, timing)
    )


def _require_prompt_list(prompts: Any) -> None:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of prompts, got one str; pass [prompt]")


def schedule_prompt(
    prompt: str, base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> tuple[ScheduledPrompt, ...]:
    """The texts of one prompt over the sampling steps, expanding `[a:b:n]` and `[a|b]`.

    `base_steps` is the first pass's step count. For the hires pass give `hires_steps` too: the
    schedule then covers the hires steps, with integers counted from the first pass's start and
    decimals in passes (1.5 = half-way through hires). `use_old_scheduling` is A1111's "Old prompt
    editing timelines": a value below 1 is a fraction, anything else a step, no hires offsets.

    The end steps strictly increase and the last one is the pass's step count. AND is not split:
    this is for negative prompts; positive prompts go through `schedule_composable_prompt`.
    """
    return _schedule(prompt, _timing(base_steps, hires_steps, use_old_scheduling))


def text_at_step(schedule: Sequence[ScheduledPrompt], step: int) -> str:
    """The text a schedule uses at `step`: the first entry whose `end_at_step >= step`.

    A1111's sampler compares its 0-based step counter the same way. Past the last entry this
    returns the last text (A1111 falls back to the first, which a sampler never reaches).
    """
    for end_at_step, text in schedule:
        if step <= end_at_step:
            return text
    return schedule[-1].text


def get_learned_conditioning_prompt_schedules(
    prompts: Sequence[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[list[int | str]]]:
    """A1111's API: `schedule_prompt` for each prompt, as lists `[[end_at_step, text], ...]`."""
    _require_prompt_list(prompts)
    timing = _timing(base_steps, hires_steps, use_old_scheduling)
    schedules: dict[str, tuple[ScheduledPrompt, ...]] = {}
    for prompt in prompts:
        if prompt not in schedules:
            schedules[prompt] = _schedule(prompt, timing)
    # Fresh lists per prompt, so a caller editing one result cannot change another's.
    return [[[end, text] for end, text in schedules[prompt]] for prompt in prompts]


# ---------------------------------------------------------------------------------------------
# AND (composable diffusion)

# Case-sensitive and whole-word: "and", "ANDROID" and "BRAND" do not split.
_AND_SEPARATOR = re.compile(r"\bAND\b")
# A trailing ":weight" (optional sign and point, no exponent); the lazy text keeps leading
# whitespace and drops trailing whitespace. Always matches.
_PART_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_composable_prompt(prompt: str) -> list[tuple[str, float]]:
    """The AND parts of a prompt as `(text, weight)`; weight 1.0 where no `:w` ends the part.

    The split comes before prompt editing: `[a AND b:c:5]` is two parts, each with a stray bracket.
    """
    parts = []
    for part in _AND_SEPARATOR.split(prompt):
        match = _PART_WEIGHT.match(part)
        text, weight = match.group(1), match.group(2)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def schedule_composable_prompt(
    prompt: str, base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> tuple[ComposablePromptPart, ...]:
    """A positive prompt's AND parts, each with its weight and its `schedule_prompt` schedule.

    The CFG step then combines `uncond + sum(weight_i * (cond_i - uncond)) * cfg_scale`.
    """
    timing = _timing(base_steps, hires_steps, use_old_scheduling)
    return tuple(
        ComposablePromptPart(text, weight, _schedule(text, timing))
        for text, weight in split_composable_prompt(prompt)
    )


def get_multicond_prompt_list(
    prompts: Sequence[str],
) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """A1111's API: the AND parts of every prompt, with identical texts stored once.

    Returns `(res_indexes, prompt_flat_list, prompt_indexes)`: per prompt a list of
    `(index into prompt_flat_list, weight)`, the distinct part texts in first-seen order, and
    text -> index.
    """
    _require_prompt_list(prompts)
    res_indexes: list[list[tuple[int, float]]] = []
    prompt_flat_list: list[str] = []
    prompt_indexes: dict[str, int] = {}
    for prompt in prompts:
        indexes = []
        for text, weight in split_composable_prompt(prompt):
            index = prompt_indexes.get(text)
            if index is None:
                index = len(prompt_flat_list)
                prompt_flat_list.append(text)
                prompt_indexes[text] = index
            indexes.append((index, weight))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes


# ---------------------------------------------------------------------------------------------
# Emphasis

# One token per match, alternatives in priority order: escapes, a lone backslash (dropped),
# openers, a weighted closer, plain closers, text. A colon that does not start a weighted closer
# is text on its own.
_ATTENTION_TOKEN = re.compile(
    r"""
    \\(?P<escaped>[()\[\]\\])
    | (?P<lone_backslash>\\)
    | (?P<opener>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<closer>[)\]])
    | [^\\()\[\]:]+
    | :
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)


def _append_text(text: str, parsed: list[list[Any]]) -> None:
    for index, part in enumerate(_BREAK.split(text)):
        if index:
            parsed.append(["BREAK", BREAK_WEIGHT])
        parsed.append([part, 1.0])


def _merge_equal_weights(parsed: list[list[Any]]) -> list[list[Any]]:
    merged: list[list[Any]] = []
    for text, weight in parsed:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return merged


def _finite_weight(text: str) -> float | None:
    try:
        weight = float(text)
    except ValueError:
        return None
    return weight if math.isfinite(weight) else None


def parse_prompt_attention(text: str, enabled: bool = True) -> list[list[Any]]:
    """Split text into `[text, weight]` runs: A1111's emphasis syntax.

    - `(x)` multiplies by 1.1, `[x]` by 1/1.1, `(x:w)` by w; nesting multiplies.
    - `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters; any other backslash is dropped.
    - Groups still open at the end are closed there; a `)` or `]` with nothing to close is text.
    - `[x:1.5]` is not weighted (text `x:1.5` at 1/1.1); `(a:1e2)` is not a weight (text `a:1e2`
      at 1.1), nor is `(a:1.2.3)`.
    - `BREAK` (whole word, surrounding whitespace removed) becomes `["BREAK", -1]`. Quirk kept
      from A1111: inside a group the marker is multiplied like its neighbours (`(a BREAK b)` gives
      `["BREAK", -1.1]`), and as it then no longer has weight -1 the tokenizer treats it as the
      word "BREAK" rather than a chunk break.
    - Neighbouring runs with equal weights are merged; an empty text gives `[["", 1.0]]`.

    `enabled=False` is the `emphasis` setting "None": brackets and backslashes are plain text and
    every run weighs 1.0, but BREAK still splits (A1111 leaves BREAK as text in that mode).
    """
    parsed: list[list[Any]] = []
    if not enabled:
        _append_text(text, parsed)
        return _merge_equal_weights(parsed)

    round_starts: list[int] = []
    square_starts: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for run in parsed[start:]:
            run[1] *= multiplier

    pos = 0
    while pos < len(text):
        token = _ATTENTION_TOKEN.match(text, pos)
        pos = token.end()
        if token["escaped"] is not None:
            parsed.append([token["escaped"], 1.0])
        elif token["lone_backslash"] is not None:
            # An empty run, as in A1111: it can survive merging next to runs of other weights.
            parsed.append(["", 1.0])
        elif token["opener"] == "(":
            round_starts.append(len(parsed))
        elif token["opener"] == "[":
            square_starts.append(len(parsed))
        elif token["weight"] is not None and round_starts:
            weight = _finite_weight(token["weight"])
            if weight is None:
                # Not a number: read the colon as text and go on from just after it.
                _append_text(":", parsed)
                pos = token.start() + 1
            else:
                multiply_from(round_starts.pop(), weight)
        elif token["closer"] == ")" and round_starts:
            multiply_from(round_starts.pop(), ROUND_BRACKET_MULTIPLIER)
        elif token["closer"] == "]" and square_starts:
            multiply_from(square_starts.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            _append_text(token.group(), parsed)

    # Same order as A1111 (all round groups, then all square ones) so the float products match.
    for start in round_starts:
        multiply_from(start, ROUND_BRACKET_MULTIPLIER)
    for start in square_starts:
        multiply_from(start, SQUARE_BRACKET_MULTIPLIER)

    if not parsed:
        return [["", 1.0]]
    return _merge_equal_weights(parsed)
