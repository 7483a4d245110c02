"""What a user of the web UI or the API may change in the settings; the command line decides.

A logged-in user is not the operator: through the Settings tab, the top bar, `POST
/sdapi/v1/options` or a request's `override_settings`, a user may not
- change where files are written, when the directory settings are locked (`--hide-ui-dir-config`,
  or a server others can reach: `--listen`/`--server-name` without `--allow-ui-dir-config`);
- point an output folder outside the folders allowed for it (modules.outputs.output_paths);
- change which extensions run at the next start when extension access is off (`--listen` without
  `--enable-insecure-extension-access`, as the Extensions tab refuses it);
- on a server others can reach, turn off a guard against requests to local and private addresses
  (`api_forbid_local_requests`, `model_sources_allow_private`): those decide what the server's own
  network position lets a user reach, which is the operator's call (config.json);
- through the API, change a setting that guards the API itself (A1111's `restrict_api`), or store
  a key that is no setting at all (a typo would be kept and change nothing).

A value equal to the one in effect always passes: clients post back what GET options returned, and
the Settings tab applies only edited fields. The operator's own path, config.json, is not checked.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.outputs.output_paths import OutputDirRules
from modules.serving.settings import DIR_CONFIG_SETTINGS, SCHEMA_BY_KEY, SettingSpec

# Which extensions load at the next start (modules.extension_host.extensions); changing them changes what code runs.
EXTENSION_SETTINGS = frozenset({"disabled_extensions", "disable_all_extensions"})
# Guards against fetching local and private addresses (image URLs in the API, model sources).
ADDRESS_GUARD_SETTINGS = frozenset({"api_forbid_local_requests", "model_sources_allow_private"})


@dataclass(frozen=True)
class SettingsPolicy:
    dir_config_locked: bool
    extension_access: bool
    output_dirs: OutputDirRules
    dir_lock_flag: str = ""  # which flag locked the directory settings, for the message
    non_local: bool = False  # others can reach the server: the address guards are the operator's

    @classmethod
    def from_args(cls, args: argparse.Namespace, data_dir: Path) -> SettingsPolicy:
        from modules.serving.cmd_args import dir_config_locked, extension_access_allowed, is_non_local

        locked = dir_config_locked(args)
        flag = "--hide-ui-dir-config" if getattr(args, "hide_ui_dir_config", False) else \
            "--listen or --server-name, without --allow-ui-dir-config"
        return cls(dir_config_locked=locked, extension_access=extension_access_allowed(args),
                   output_dirs=OutputDirRules.from_args(args, data_dir), dir_lock_flag=flag if locked else "",
                   non_local=is_non_local(args))

    def refusals(self, changes: Mapping[str, Any], current: Mapping[str, Any], *, api: bool,
                 specs: Mapping[str, SettingSpec] = SCHEMA_BY_KEY) -> dict[str, str]:
        """{key: why} for each change in `changes` a user may not make; `current` holds the values in
        effect (a key sent with its current value always passes). `api`: the change comes through
        the API, where `restrict_api` settings and unknown keys are refused too. `specs`: every
        setting known (`SettingsStore.specs_by_key()`: extensions' options included)."""
        refused: dict[str, str] = {}
        changed = {key: value for key, value in changes.items() if not (key in current and current[key] == value)}
        for key in changed:
            spec = specs.get(key)
            if key in DIR_CONFIG_SETTINGS and self.dir_config_locked:
                refused[key] = (f"setting {key!r} is locked on this server ({self.dir_lock_flag}); its owner "
                                "sets it in config.json")
            elif key in EXTENSION_SETTINGS and not self.extension_access:
                refused[key] = (f"setting {key!r} cannot be changed on this server: it listens beyond localhost "
                                "(--listen or --server-name), and which extensions are enabled decides what code "
                                "runs at the next start; its owner sets it in config.json, or starts the server "
                                "with --enable-insecure-extension-access")
            elif key in ADDRESS_GUARD_SETTINGS and self.non_local:
                refused[key] = (f"setting {key!r} cannot be changed on this server: it listens beyond localhost "
                                "(--listen or --server-name), and this guard decides which local and private "
                                "addresses users can make the server fetch; its owner sets it in config.json")
            elif api and spec is not None and spec.restrict_api:
                refused[key] = (f"setting {key!r} cannot be changed through the API; change it in the Settings "
                                "tab or in config.json")
            elif api and spec is None and key not in current:
                close = difflib.get_close_matches(key, list(specs), n=3)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
                    "; GET /sdapi/v1/options lists the settings"
                refused[key] = f"there is no setting {key!r}{hint}"
        rest = {key: value for key, value in changed.items() if key not in refused}
        refused.update(self.output_dirs.refusals(rest))
        return refused
