"""Where things live on disk, resolved once from the flags (A1111's folder rules)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from modules.serving.cmd_args import UPSCALER_FOLDERS

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    models_dir: Path
    checkpoints_dir: Path  # <models>/Stable-diffusion
    ckpt_dir: Path | None  # --ckpt-dir, scanned first
    vae_dir: Path  # <models>/VAE
    extra_vae_dir: Path | None  # --vae-dir
    embeddings_dir: Path
    hypernetwork_dir: Path
    lora_dir: Path
    config_file: Path
    cache_file: Path
    # --<family>-models-path flags that were given: ((family, folder), ...)
    upscaler_flag_dirs: tuple[tuple[str, Path], ...] = ()

    def upscaler_dirs(self, family: str) -> list[Path]:
        """Folders scanned for one upscaler family's model files, in A1111's order (the flag's folder,
        then <models>/<family>), without duplicates."""
        dirs = [folder for name, folder in self.upscaler_flag_dirs if name == family]
        default = self.models_dir / family
        if default.resolve() not in {d.resolve() for d in dirs}:
            dirs.append(default)
        return dirs

    @property
    def checkpoint_dirs(self) -> list[Path]:
        """Folders scanned for checkpoints, in A1111's order, without duplicates."""
        dirs = [self.ckpt_dir] if self.ckpt_dir is not None else []
        if self.checkpoints_dir.resolve() not in {d.resolve() for d in dirs}:
            dirs.append(self.checkpoints_dir)
        return dirs

    @property
    def merge_trials_dir(self) -> Path:
        """Where "merge and load" writes its trials: a folder no checkpoint scan looks in."""
        return self.data_dir / "cache" / "merge-trials"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Paths":
        data_dir = Path(args.data_dir).expanduser().resolve() if args.data_dir else REPO_ROOT
        models_dir = Path(args.models_dir).expanduser().resolve() if args.models_dir else data_dir / "models"

        def optional(value: str | None) -> Path | None:
            return Path(value).expanduser().resolve() if value else None

        return cls(
            data_dir=data_dir,
            models_dir=models_dir,
            checkpoints_dir=models_dir / "Stable-diffusion",
            ckpt_dir=optional(args.ckpt_dir),
            vae_dir=models_dir / "VAE",
            extra_vae_dir=optional(args.vae_dir),
            embeddings_dir=optional(args.embeddings_dir) or data_dir / "embeddings",
            hypernetwork_dir=optional(args.hypernetwork_dir) or models_dir / "hypernetworks",
            lora_dir=optional(args.lora_dir) or models_dir / "Lora",
            config_file=data_dir / "config.json",
            cache_file=data_dir / "cache.json",
            upscaler_flag_dirs=tuple(
                (family, folder) for family, _ in UPSCALER_FOLDERS
                if (folder := optional(getattr(args, f"{family.lower()}_models_path", None))) is not None),
        )

    def ensure_dirs(self) -> None:
        for folder in (self.checkpoints_dir, self.vae_dir, self.embeddings_dir, self.hypernetwork_dir, self.lora_dir):
            folder.mkdir(parents=True, exist_ok=True)
