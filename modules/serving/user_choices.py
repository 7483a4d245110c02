"""Each user's own checkpoint, VAE and clip skip on a server shared with `--multi-user`.

Without separation the top bar changes the settings, and so the model, under everyone (A1111). With
it, the top bar's three choices belong to the user who made them: they are kept here, by user name,
and every job the user submits carries them (modules.serving.generation_service), so the model
manager switches checkpoints between jobs, keeping its cache (`sd_checkpoints_limit`), instead of
one user's pick changing the model of another user's next job. A user who has not chosen gets the
global settings (the operator's).

This class is the only owner of that state. It is kept in `<data-dir>/user-choices.json` (written
through a temp file), so choices survive a restart. Values are validated by the caller
(modules.serving.settings_change.change_user_choices) before they are stored here.
"""

from __future__ import annotations

import json
import os
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modules.common.atomic_files import write_bytes

log = logging.getLogger(__name__)

# The top bar's settings that are a user's own choice with --multi-user (A1111's quicksettings defaults).
USER_CHOICE_KEYS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
FILE_NAME = "user-choices.json"


class UserChoices:
    """{user name: {key: value}} for `USER_CHOICE_KEYS`; thread-safe."""

    def __init__(self, path: Path | None):
        self._path = path
        self._lock = threading.Lock()
        self._choices: dict[str, dict[str, Any]] = self._read() if path is not None else {}

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            # Moved aside, not overwritten by the next choice: the operator can still recover it.
            aside = self._path.with_name(self._path.name + ".unreadable")
            try:
                os.replace(self._path, aside)
            except OSError:
                aside = None
            log.warning("Cannot read %s (%s)%s; every user starts from the global settings", self._path, error,
                        f", moved to {aside.name}" if aside else "")
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(user): {key: value for key, value in choices.items() if key in USER_CHOICE_KEYS}
                for user, choices in data.items() if isinstance(choices, dict)}

    def of(self, user: str) -> dict[str, Any]:
        """The user's own choices (only the keys they set)."""
        with self._lock:
            return dict(self._choices.get(user, {}))

    def effective(self, user: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Every key of `USER_CHOICE_KEYS`: the user's choice, else the global setting."""
        own = self.of(user)
        return {key: own.get(key, settings[key]) for key in USER_CHOICE_KEYS}

    def forget(self, user: str, keys) -> None:
        """Drop `user`'s own choice of `keys`: they follow the global settings again."""
        with self._lock:
            own = self._choices.get(user, {})
            if not any(key in own for key in keys):
                return
            for key in keys:
                own.pop(key, None)
            self._save_locked()

    def set(self, user: str, changes: Mapping[str, Any]) -> list[str]:
        """Store validated `changes` for `user`; returns the keys whose value changed."""
        unknown = sorted(set(changes) - set(USER_CHOICE_KEYS))
        if unknown:
            raise ValueError(f"{unknown} are not a user's own choices; only {list(USER_CHOICE_KEYS)} are")
        with self._lock:
            own = self._choices.setdefault(user, {})
            changed = [key for key, value in changes.items() if own.get(key) != value]
            own.update(changes)
            if changed:
                self._save_locked()
        return changed

    def _save_locked(self) -> None:
        if self._path is not None:
            text = json.dumps(self._choices, indent=2, sort_keys=True)
            write_bytes(self._path, text.encode("utf-8"), what="the users' checkpoint choices")
