"""Prompt styles from A1111's `styles.csv` (`name,prompt,negative_prompt`), read on each use.

A style's text is merged into the prompt as A1111 does: `{prompt}` in the style is replaced by the
prompt; otherwise the style is appended after `, `.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


def read_styles(path: Path) -> dict[str, PromptStyle]:
    """The styles in `path` by name, in file order; an absent file has none."""
    if not path.is_file():
        return {}
    styles: dict[str, PromptStyle] = {}
    with open(path, encoding="utf-8-sig", newline="") as file:
        for row in csv.DictReader(file, skipinitialspace=True):
            name = (row.get("name") or "").strip()
            if name:
                styles[name] = PromptStyle(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles


def merge_style(style_text: str, prompt: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, names: Sequence[str],
                 styles: dict[str, PromptStyle]) -> tuple[str, str]:
    """Both prompts with the named styles applied in order; an unknown name is a ValueError."""
    unknown = [name for name in names if name not in styles]
    if unknown:
        known = ", ".join(repr(n) for n in styles) or "none (no styles.csv)"
        raise ValueError(f"styles: unknown style {unknown[0]!r}; known styles: {known}")
    for name in names:
        prompt = merge_style(styles[name].prompt, prompt)
        negative_prompt = merge_style(styles[name].negative_prompt, negative_prompt)
    return prompt, negative_prompt
