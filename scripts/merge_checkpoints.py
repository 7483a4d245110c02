"""Merge checkpoints from the command line, without the server (same engine as the Merger tab/API).

    python scripts/merge_checkpoints.py A.safetensors B.safetensors [C.safetensors]
        [--method "Weighted sum"] [--multiplier 0.3] [--multiplier2 0] [--save-as-half]
        [--custom-name NAME] [--block-weights 0.5,0.5,...] [--discard-weights REGEX]
        [--method-option seed=1 --method-option ties_density=0.5] [--ckpt-dir DIR] [--data-dir DIR] [--overwrite]

Models are named as in the UI: a title, a file name, a hash or a path under the checkpoint folders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError(f"method options are key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="primary, secondary and tertiary model (1 to 3)")
    parser.add_argument("--method", default="Weighted sum", help="interpolation method (A1111 name)")
    parser.add_argument("--multiplier", type=float, default=0.3)
    parser.add_argument("--multiplier2", type=float, default=0.0)
    parser.add_argument("--save-as-half", action="store_true")
    parser.add_argument("--custom-name", default="")
    parser.add_argument("--block-weights", default=None, help="comma-separated block weights (26 SD1/SD2, 20 SDXL)")
    parser.add_argument("--discard-weights", default="")
    parser.add_argument("--method-option", action="append", type=_option, default=[])
    parser.add_argument("--no-metadata", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--ckpt-dir", default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if len(args.models) > 3:
        parser.error("at most three models (primary, secondary, tertiary)")

    import logging

    from modules.library.checkpoints import CheckpointRegistry
    from modules.serving.cmd_args import parse_args
    from modules.library.hashes import HashCache
    from modules.merging.merger import MergeError, MergeRequest, merge_checkpoints
    from modules.serving.paths import Paths

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    flags = parse_args([*(["--ckpt-dir", args.ckpt_dir] if args.ckpt_dir else []),
                        *(["--data-dir", args.data_dir] if args.data_dir else [])])
    paths = Paths.from_args(flags)
    extra_dirs = sorted({str(Path(m).resolve().parent) for m in args.models if Path(m).is_file()})
    registry = CheckpointRegistry([*paths.checkpoint_dirs, *extra_dirs], HashCache(paths.cache_file))
    registry.refresh()
    names = [str(Path(m).resolve().name) if Path(m).is_file() else m for m in args.models]
    request = MergeRequest(
        primary_model_name=names[0], secondary_model_name=names[1] if len(names) > 1 else None,
        tertiary_model_name=names[2] if len(names) > 2 else None, interpolation_method=args.method,
        multiplier=args.multiplier, multiplier2=args.multiplier2, save_as_half=args.save_as_half,
        custom_name=args.custom_name, discard_weights=args.discard_weights, save_metadata=not args.no_metadata,
        block_weights=tuple(float(x) for x in args.block_weights.split(",")) if args.block_weights else None,
        method_options=dict(args.method_option), overwrite=args.overwrite)
    output_dir = paths.ckpt_dir or paths.checkpoints_dir
    try:
        result = merge_checkpoints(request, registry, output_dir)
    except (MergeError, KeyError, ValueError) as e:
        print(f"merge failed: {e}", file=sys.stderr)
        return 2
    print(f"Checkpoint saved to {result.path} [{result.sha256[:10]}] in {result.timings['total']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
