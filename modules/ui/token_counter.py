"""The prompt boxes' token counters: "80/150" = tokens used / capacity of the 75-token chunks.

Counted as A1111 counts (`update_token_counter`): extra-network tags removed, the positive prompt
split at AND, every prompt-editing variant over the steps tokenized, and the longest one shown.
No model is needed: the CLIP vocabulary in configs/tokenizers is the same for every SD text encoder,
and the chunking is `conditioning.PromptTokenizer`'s, so the count is the one generation uses.
Embeddings that fit the current model count as their vectors, as in A1111.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from modules.generation.conditioning import CHUNK_LENGTH, ConditioningOptions, PromptTokenizer


class TokenCounter:
    """Counts tokens; loads the tokenizer on first use and keeps one `PromptTokenizer` per set of
    embeddings and options (building one tokenizes every embedding name)."""

    def __init__(self, tokenizer_factory: Callable[[], Any] | None = None):
        self._tokenizer_factory = tokenizer_factory or _default_tokenizer
        self._tokenizer = None
        self._prompt_tokenizer: PromptTokenizer | None = None
        self._key: tuple | None = None
        self._lock = threading.Lock()

    def _prompt_tokenizer_for(self, embeddings: Mapping[str, object], options: ConditioningOptions) -> PromptTokenizer:
        key = (tuple(sorted((name, id(e)) for name, e in embeddings.items())), options)
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._tokenizer_factory()
            if self._prompt_tokenizer is None or self._key != key:
                self._prompt_tokenizer = PromptTokenizer(self._tokenizer, embeddings, options)
                self._key = key
            return self._prompt_tokenizer

    def count(self, text: str, steps: int = 20, *, is_positive: bool = True,
              embeddings: Mapping[str, object] | None = None,
              options: ConditioningOptions | None = None) -> tuple[int, int]:
        """(tokens, capacity) of the longest variant of `text`, e.g. (80, 150); `options` default to A1111's."""
        from modules.networks.syntax import parse_prompt
        from modules.generation.prompt_parser import get_learned_conditioning_prompt_schedules, get_multicond_prompt_list

        tokenizer = self._prompt_tokenizer_for(embeddings or {}, options or ConditioningOptions())
        steps = max(1, int(steps or 1))
        try:
            text, _ = parse_prompt(text)
            prompts = get_multicond_prompt_list([text])[1] if is_positive else [text]
            schedules = get_learned_conditioning_prompt_schedules(prompts, steps)
            variants = [variant for schedule in schedules for _, variant in schedule]
        except ValueError:  # a malformed schedule: count the text as written, as A1111 does
            variants = [text]
        counts = []
        for variant in variants or [""]:
            chunks, used = tokenizer.chunks(variant)
            counts.append((used, len(chunks) * CHUNK_LENGTH))
        return max(counts, key=lambda pair: pair[0])


def format_token_count(used: int, capacity: int) -> str:
    """The counter's text; marked `over` past the first chunk, as a hint that a new chunk started."""
    css = "token-counter over" if used > CHUNK_LENGTH else "token-counter"
    return f"<span class='{css}'>{used}/{capacity}</span>"


def _default_tokenizer():
    from modules.library.clip_tokenizer import load_clip_tokenizer

    return load_clip_tokenizer("clip-vit-l")
