"""CLIP tokenizers for Stable Diffusion text encoders, loaded offline from `configs/tokenizers/clip`.

Two kinds, same vocabulary and merges, different pad token:

- "clip-vit-l": SD1 and SDXL's first encoder; pads with `<|endoftext|>` (49407).
- "open-clip": SD2 and SDXL's second encoder; pads with `!` (id 0), as open_clip does.

The pad token is assigned on the loaded tokenizer rather than passed to `from_pretrained`: passed
there (or named in a folder's config, as SD2 tokenizer folders do), transformers registers `!` as an
added special token and the fast tokenizer then cuts every `!` out of the text before BPE ("wow!!!"
gives ids 0, 0, 0 instead of CLIP's single `!!!</w>`). See `scripts/build_tokenizers.py` for how
the files are made.

transformers 5's `CLIPTokenizer` does not run ftfy or unescape HTML; `clean_prompt_text` does the
cleaning CLIP/open_clip do, and callers apply it before tokenizing. Nothing is cached here.

Known differences from open_clip's `SimpleTokenizer`, all from its case-insensitive split regex or
its own special-token names, none likely in real prompts:
- U+0345 (combining ypogegrammeni) counts as a letter there (it case-folds to iota), as a mark here;
- an apostrophe before `ſ` (long s, also what ftfy makes of the ligature `ﬅ`) is the contraction
  `'s` there, two pieces here;
- the literal text `<|startoftext|>`/`<|endoftext|>` is one special token here (as in OpenAI CLIP
  and transformers), plain text in open_clip, whose special tokens are `<start_of_text>`/`<end_of_text>`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import ftfy

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "configs" / "tokenizers" / "clip"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKENS = {
    "clip-vit-l": EOS_TOKEN,
    "open-clip": "!",
}


def load_clip_tokenizer(kind: str, folder: str | Path | None = None) -> CLIPTokenizer:
    """A fresh `CLIPTokenizer` for `kind` ("clip-vit-l" or "open-clip"), read from local files only.

    `folder` is a tokenizer folder a user's model config names (vocab.json + merges.txt); by default
    the repository's own files. Whatever pad token that folder's config names is overridden by
    `kind`'s, since SD2 tokenizer folders say "!" there (see the module docstring).
    """
    if kind not in PAD_TOKENS:
        raise ValueError(f"unknown CLIP tokenizer kind {kind!r}; use one of {sorted(PAD_TOKENS)}")
    source = TOKENIZER_DIR if folder is None else Path(folder)
    if not (source / "vocab.json").is_file():
        fix = (
            "regenerate them with `python scripts/build_tokenizers.py`"
            if folder is None
            else "name a folder with vocab.json and merges.txt, or none to use the built-in files"
        )
        raise FileNotFoundError(f"no CLIP tokenizer vocab.json in {source}; {fix}")
    # Imported here so that importing this module (e.g. for clean_prompt_text) stays cheap.
    from tokenizers import normalizers
    from transformers import CLIPTokenizer

    # Loading with pad = EOS (already special) keeps "!" from becoming an added token; the real pad
    # is then set as a plain attribute, which only decides the id used for padding.
    tokenizer = CLIPTokenizer.from_pretrained(str(source), local_files_only=True, pad_token=EOS_TOKEN)
    tokenizer.pad_token = PAD_TOKENS[kind]
    # The stock normalizer is NFC + whitespace collapse + lowercase. CLIP never applies NFC after its
    # cleaning, and lowercasing can produce composable sequences ("H\u0331" -> "h\u0331", which NFC
    # turns into the single letter "\u1e96"), so keep only the lowercasing: on text from
    # clean_prompt_text it changes nothing, and raw text still gets lowercased.
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()

    # Added tokens are cut out of the text before BPE; CLIP has none besides BOS/EOS. A folder with a
    # saved tokenizer.json can carry more (e.g. "!" from an SD2 config), which would change the ids.
    extra = sorted(
        token.content
        for token in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()
        if token.content not in (BOS_TOKEN, EOS_TOKEN)
    )
    if extra:
        raise ValueError(
            f"CLIP tokenizer in {source} has added tokens {extra} that CLIP does not split text on; "
            "delete that folder's tokenizer.json (vocab.json + merges.txt suffice) or use the built-in files"
        )
    return tokenizer


def clean_prompt_text(text: str) -> str:
    """Text as CLIP's tokenizer sees it: ftfy-fixed, HTML-unescaped twice, whitespace collapsed, lowercased.

    Same steps and order as open_clip's default ("lower") cleaning. Lowercasing here rather than
    only in the tokenizer matters: Python's `str.lower` turns a word-final capital sigma into `ς`, the
    tokenizer's per-character lowercasing into `σ`, and those tokenize differently.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()
