"""Build the CLIP tokenizer files in `configs/tokenizers/clip/` from CLIP's own BPE data.

Every Stable Diffusion text encoder (SD1's CLIP ViT-L, SD2's OpenCLIP ViT-H, both SDXL encoders)
uses the same byte-level BPE published with OpenAI CLIP as `bpe_simple_vocab_16e6.txt.gz` (MIT).
That file ships, byte-identical, inside the `open-clip-torch` wheel. This script reads it and
derives `vocab.json` and `merges.txt` in the exact order CLIP's `SimpleTokenizer` assigns ids:

    1. the 256 byte symbols of the byte-to-unicode table (printable bytes first, in byte order,
       then the remaining bytes mapped to code points 256 and up), ids 0-255;
    2. the same 256 symbols with `</w>` (end of word) appended, ids 256-511;
    3. the first 48,894 merges of the file (line 2 onwards), each merged pair as one token;
    4. `<|startoftext|>` (49406) and `<|endoftext|>` (49407).

Layout: one folder, shared by both tokenizer kinds
--------------------------------------------------
SD1/SDXL-first-encoder ("clip-vit-l") and SD2/SDXL-second-encoder ("open-clip") tokenizers differ
only in the pad token (`<|endoftext|>` vs `!`, id 0). The folder's `tokenizer_config.json` holds the
clip-vit-l defaults, and `modules.library.clip_tokenizer.load_clip_tokenizer("open-clip")` sets the pad
token after loading. A second folder whose config says `pad_token: "!"` (or passing
`pad_token="!"` to `from_pretrained`) would be wrong, not just redundant: transformers then
registers `!` as an added special token, and the fast tokenizer splits it out of the text before
BPE, so "wow!!!" becomes `wow</w> ! ! !` (ids 0, 0, 0) instead of `wow</w> !!!</w>` as CLIP and
open_clip tokenize it. Assigning `tokenizer.pad_token` on the loaded tokenizer only sets the id used
for padding. One folder also keeps the ~1.5 MB of vocabulary in the repository once.

Output is byte-reproducible: vocab.json lists tokens in id order, one per line; the small JSON
configs have sorted keys; every file is UTF-8 with `\\n` line ends.

Usage (from the repository root):
    python scripts/build_tokenizers.py                 # pip-downloads open-clip-torch (no deps)
    python scripts/build_tokenizers.py --wheel open_clip_torch-3.3.0-py3-none-any.whl
    python scripts/build_tokenizers.py --bpe bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "configs" / "tokenizers"
TOKENIZER_FOLDER = "clip"

# The wheel the committed files were built from; pinned so a rebuild reads the same bytes.
DEFAULT_PACKAGE_SPEC = "open-clip-torch==3.3.0"
BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
EXPECTED_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# CLIP's vocabulary is 49,152 entries before special tokens: 512 byte symbols + this many merges.
MERGE_COUNT = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + MERGE_COUNT + 2  # 49,408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77


def byte_to_unicode_table() -> dict[int, str]:
    """Map each byte to a printable, non-whitespace character, as CLIP's byte-level BPE does.

    Bytes that are already printable Latin-1 characters map to themselves; the other 68 (controls,
    space, NBSP, soft hyphen) map to consecutive code points from 256, in byte order. The dict's
    order (printable bytes first) is the order of the first 256 vocabulary ids.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    printable_set = set(printable)
    remapped = (byte for byte in range(256) if byte not in printable_set)
    for offset, byte in enumerate(remapped):
        table[byte] = chr(256 + offset)
    return table


def read_merges(bpe_gz_bytes: bytes) -> list[tuple[str, str]]:
    """The merges CLIP uses: lines 2..48,895 of the file (line 1 is a version header)."""
    lines = gzip.decompress(bpe_gz_bytes).decode("utf-8").split("\n")
    if not lines[0].endswith("#version: 0.2"):
        raise ValueError(f"unexpected first line {lines[0]!r} in {BPE_FILE_NAME}; is it CLIP's BPE file?")
    merges = []
    for line_number, line in enumerate(lines[1 : 1 + MERGE_COUNT], start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"line {line_number} of {BPE_FILE_NAME} is {line!r}, expected two symbols")
        merges.append((parts[0], parts[1]))
    if len(merges) != MERGE_COUNT:
        raise ValueError(f"{BPE_FILE_NAME} holds {len(merges)} merges, CLIP uses {MERGE_COUNT}")
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    byte_symbols = list(byte_to_unicode_table().values())
    tokens = byte_symbols + [symbol + END_OF_WORD for symbol in byte_symbols]
    tokens += [first + second for first, second in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(
            f"vocabulary has {len(vocab)} distinct tokens (of {len(tokens)}), expected {VOCAB_SIZE}"
        )
    return vocab


def vocab_json(vocab: dict[str, int]) -> str:
    # Id order (not key order) so the file reads like the vocabulary and diffs stay local.
    ordered = dict(sorted(vocab.items(), key=lambda item: item[1]))
    return json.dumps(ordered, ensure_ascii=False, indent=1) + "\n"


def merges_txt(merges: list[tuple[str, str]]) -> str:
    # transformers expects the "#version" header line and skips it.
    return "#version: 0.2\n" + "".join(f"{first} {second}\n" for first, second in merges)


def tokenizer_config_json() -> str:
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
        "add_prefix_space": False,
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def special_tokens_map_json() -> str:
    tokens = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    return json.dumps(tokens, indent=2, sort_keys=True) + "\n"


def source_md(source_name: str, bpe_sha256: str) -> str:
    return f"""# Source of the CLIP tokenizer files

`{TOKENIZER_FOLDER}/vocab.json` and `{TOKENIZER_FOLDER}/merges.txt` are generated, not hand-written.

- Data: `{BPE_FILE_NAME}` (OpenAI CLIP's byte-level BPE, MIT licence),
  read from `{source_name}`.
- sha256 of `{BPE_FILE_NAME}`:
  `{bpe_sha256}`.
  Any copy with this sha256 (openai-clip and clip-anytorch ship one too) gives the same files.
- Vocabulary: {VOCAB_SIZE:,} tokens in CLIP `SimpleTokenizer` id order; {MERGE_COUNT:,} merges.
- The folder serves both SD tokenizer kinds; `modules/clip_tokenizer.py` sets the pad token
  (`<|endoftext|>` for clip-vit-l, `!` for open-clip). See `scripts/build_tokenizers.py` for why
  there is one folder and not two.

Regenerate (needs only the standard library and pip; downloads the wheel without dependencies):

    python scripts/build_tokenizers.py
    git diff --stat configs/tokenizers   # expect no change

or offline from a local copy: `--wheel PATH.whl` or `--bpe PATH/{BPE_FILE_NAME}`.
"""


def read_bpe_from_wheel(wheel_path: Path) -> bytes:
    with zipfile.ZipFile(wheel_path) as wheel:
        members = [name for name in wheel.namelist() if name.endswith("/" + BPE_FILE_NAME)]
        if len(members) != 1:
            raise ValueError(
                f"{wheel_path} holds {len(members)} copies of {BPE_FILE_NAME} ({members}); "
                "pass an open-clip-torch or openai-clip wheel, or the file itself with --bpe"
            )
        return wheel.read(members[0])


def download_wheel(package_spec: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["-d", str(into), package_spec]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(
            f"`{' '.join(command)}` failed (exit {result.returncode}):\n{result.stderr.strip()}\n"
            "Download the wheel elsewhere and pass --wheel PATH, or pass --bpe PATH."
        )
    return wheels[0]


def write_text(path: Path, text: str) -> None:
    # newline="" keeps "\n" on every platform, so the files are the same bytes everywhere.
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(text)


def build(bpe_gz_bytes: bytes, source_name: str, out_dir: Path, expected_sha256: str | None) -> Path:
    sha256 = hashlib.sha256(bpe_gz_bytes).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ValueError(
            f"{BPE_FILE_NAME} from {source_name} has sha256 {sha256}, expected {expected_sha256}; "
            "if this is a deliberate new source, rerun with --expect-sha256 any and review the diff"
        )
    merges = read_merges(bpe_gz_bytes)
    vocab = build_vocab(merges)

    folder = out_dir / TOKENIZER_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "vocab.json", vocab_json(vocab))
    write_text(folder / "merges.txt", merges_txt(merges))
    write_text(folder / "tokenizer_config.json", tokenizer_config_json())
    write_text(folder / "special_tokens_map.json", special_tokens_map_json())
    write_text(out_dir / "SOURCE.md", source_md(source_name, sha256))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help="a downloaded open-clip-torch (or openai-clip) wheel")
    source.add_argument("--bpe", type=Path, help=f"a copy of {BPE_FILE_NAME}")
    parser.add_argument(
        "--package",
        default=DEFAULT_PACKAGE_SPEC,
        help=f"what to pip-download otherwise (default {DEFAULT_PACKAGE_SPEC})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output folder (default configs/tokenizers)")
    parser.add_argument(
        "--expect-sha256",
        default=EXPECTED_BPE_SHA256,
        help="sha256 the BPE file must have; 'any' accepts whatever the source holds",
    )
    args = parser.parse_args(argv)
    expected_sha256 = None if args.expect_sha256 == "any" else args.expect_sha256

    if args.bpe is not None:
        bpe_gz_bytes, source_name = args.bpe.read_bytes(), args.bpe.name
    elif args.wheel is not None:
        bpe_gz_bytes, source_name = read_bpe_from_wheel(args.wheel), args.wheel.name
    else:
        with tempfile.TemporaryDirectory(prefix="atelier-open-clip-") as temp_dir:
            wheel = download_wheel(args.package, Path(temp_dir))
            bpe_gz_bytes, source_name = read_bpe_from_wheel(wheel), wheel.name

    folder = build(bpe_gz_bytes, source_name, args.out, expected_sha256)
    print(f"wrote {folder} ({VOCAB_SIZE} tokens, {MERGE_COUNT} merges) from {source_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
