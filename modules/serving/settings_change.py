"""The one way a user changes settings: `POST /sdapi/v1/options`, the top bar and the Settings tab
all call `change_settings`, so a change that cannot be applied behaves the same from each of them.

A change goes through these steps, in A1111's order (its API loads the checkpoint first, then sets
each other key through `opts.set`, which stores the value, runs the setting's onchange and puts
the old value back when onchange raises):
1. read-only keys (the checkpoint's hash) are dropped;
2. refusals: the settings policy (modules.serving.settings_policy; API or UI rules), each value's
   rules (modules.serving.settings), and an SD VAE that is not among the listed files;
3. the checkpoint, when one is asked for: looked up (a name that matches nothing raises
   `CheckpointNotFoundError`, a file known not to load `BrokenCheckpointError`, before anything
   changes) and loaded between jobs; if loading fails, the previous model stays and nothing else
   is changed;
4. the other values are stored in config.json;
5. applied (`AppContext.settings_changed`): the VAE settings to the loaded model between jobs, and
   an extension option to its `onchange` (modules.extension_host.options). If that fails, the keys
   it applied get their previous values back, in config.json too, and the report says which and
   why (`reverted`). The model keeps the VAE it had.

On a server shared with `--multi-user` (modules.serving.accounts) a user who is not an operator
changes only their own checkpoint, VAE and clip skip (`change_user_choices`: stored per user,
carried by their jobs, the model is not switched under anyone); every other key is refused, naming
the operators' flag. Operators (`--admin-users`) change the global settings as above.

Refusals differ by caller on purpose. Through the API a change is all or nothing: one refused key
and nothing is stored (the route answers 422 naming every refused key). The Settings tab stores the
valid fields and lists the refused ones, so one typo does not throw away the rest of the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from modules.common.atomic_files import DiskFullError
from modules.serving.app_context import VAE_SETTINGS, AppContext
from modules.serving.accounts import SHARED_USER, User
from modules.serving.settings import secrets_unchanged
from modules.serving.user_choices import USER_CHOICE_KEYS

# Kept by the program (the loaded checkpoint's hash): a client posting back GET options sends it.
READ_ONLY_SETTINGS = frozenset({"sd_checkpoint_hash"})
CHECKPOINT_SETTING = "sd_model_checkpoint"


@dataclass(frozen=True)
class SettingsChangeReport:
    """What `change_settings` did.

    `changed`: keys stored with a new value (and applied). `refused`: {key: why} for keys not
    stored (policy, invalid value, unknown VAE). `reverted`: {key: why} for keys whose new value
    could not be applied and whose previous value is back. `notes`: what else the user should know.
    `failure`: the exception that caused the reverts, for a caller that maps it to a status.
    """

    changed: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    reverted: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()
    failure: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return not self.refused and not self.reverted


def change_settings(context: AppContext, changes: Mapping[str, Any], *, api: bool,
                    user: User = SHARED_USER) -> SettingsChangeReport:
    """Validate, store and apply `changes` (see the module docstring for the steps). `api`: the
    change comes through the API (its policy rules; refusals change nothing at all). `user`: who
    asks (a --multi-user user who is not an operator changes only their own choices). Raises
    `CheckpointNotFoundError` / `BrokenCheckpointError` for a checkpoint that cannot be used, and
    OSError (e.g. `DiskFullError`) when config.json cannot be written."""
    if not user.admin:
        return _change_as_user(context, changes, api=api, user=user)
    changes = {key: value for key, value in changes.items() if key not in READ_ONLY_SETTINGS}
    changes = secrets_unchanged(changes, context.settings.specs_by_key())
    wanted = changes.pop(CHECKPOINT_SETTING, None)
    before = context.settings.current()
    refused = context.settings_policy.refusals(changes, before, api=api, specs=context.settings.specs_by_key())
    clean, invalid = context.settings.validate_each(changes)
    for key, why in invalid.items():  # a refused key's value is checked too: the answer names both problems
        refused[key] = f"{refused[key]}; {why}" if key in refused else why
    if "sd_vae" in clean and "sd_vae" not in refused and clean["sd_vae"] != before["sd_vae"]:
        problem = _vae_problem(context, clean["sd_vae"], api=api)
        if problem:
            refused["sd_vae"] = problem
    for key in UPSCALER_SETTINGS:
        if key in clean and key not in refused and clean[key] != before[key] and context.upscalers is not None \
                and clean[key] not in context.upscalers.registry:
            refused[key] = (f"setting {key!r} must be one of {context.upscalers.registry.names()}, got {clean[key]!r} "
                            "(upscaler model files go in models/ESRGAN, models/RealESRGAN, ...)")
    clean = {key: value for key, value in clean.items() if key not in refused}
    if api and refused:
        return SettingsChangeReport(refused=MappingProxyType(refused))

    if wanted:
        # A1111 loads the checkpoint before setting the rest.
        title = context.checkpoints.check_loadable(context.checkpoints.find(wanted)).title
        try:
            context.between_jobs(lambda: context.switch_checkpoint(title))
        except DiskFullError:  # loaded, but config.json could not remember it: not a failed load
            raise
        except Exception as error:  # noqa: BLE001 - the model manager keeps the previous model; reported
            info = context.models.current_info()
            kept = f"{info.title!r} stays loaded" if info is not None else "no checkpoint is loaded"
            why = f"setting {CHECKPOINT_SETTING!r} is unchanged ({kept}): loading {title!r} failed: {_reason(error)}"
            notes = ("Nothing else was changed.",) if clean else ()
            return SettingsChangeReport(refused=MappingProxyType(refused),
                                        reverted=MappingProxyType({CHECKPOINT_SETTING: why}), notes=notes,
                                        failure=error)

    stored_before = context.settings.stored()
    changed = context.settings.apply(clean)
    report = replace(_apply_to_model(context, changed, before, stored_before, clean), refused=MappingProxyType(refused))
    if user.name and context.accounts.multi_user:
        # An operator setting the global checkpoint/VAE/clip skip gets it for their own jobs too (their
        # own top-bar choice of those keys would otherwise keep overriding what they just set).
        context.user_choices.forget(user.name, [key for key in (*changed, *([CHECKPOINT_SETTING] if wanted else []))
                                                if key in USER_CHOICE_KEYS])
    return report


OPERATORS_ONLY = ("setting {key!r} is global on this shared server: only its operators (--admin-users) change "
                  "it. Your own choices are the checkpoint, VAE and clip skip (the top bar)")


def _change_as_user(context: AppContext, changes: Mapping[str, Any], *, api: bool, user: User) -> SettingsChangeReport:
    """A non-operator's change: their own choices stored, the rest refused (the module docstring)."""
    changes = {key: value for key, value in changes.items() if key not in READ_ONLY_SETTINGS}
    current = context.settings.current()
    # Compared as validated values: a JSON list posted back equals the tuple the setting holds.
    globals_, _ = context.settings.validate_each({k: v for k, v in changes.items() if k not in USER_CHOICE_KEYS})
    refused = {key: OPERATORS_ONLY.format(key=key) for key in changes
               if key not in USER_CHOICE_KEYS and current.get(key, object()) != globals_.get(key, object())}
    own = {key: value for key, value in changes.items() if key in USER_CHOICE_KEYS}
    if api and refused:
        return SettingsChangeReport(refused=MappingProxyType(refused))
    report = change_user_choices(context, user, own, api=api)
    return replace(report, refused=MappingProxyType({**refused, **report.refused}))


def change_user_choices(context: AppContext, user: User, changes: Mapping[str, Any], *,
                        api: bool = False) -> SettingsChangeReport:
    """Store `user`'s own checkpoint, VAE and clip skip (modules.serving.user_choices) after checking
    them as `change_settings` would; nothing is loaded now (their next job loads it). Raises
    `CheckpointNotFoundError` / `BrokenCheckpointError` for a checkpoint that cannot be used."""
    if not user.name:
        raise ValueError("a user's own choices need --multi-user and a logged-in user")
    clean, refused = context.settings.validate_each({k: v for k, v in changes.items() if k != CHECKPOINT_SETTING})
    if "sd_vae" in clean:
        problem = _vae_problem(context, clean["sd_vae"], api=api)
        if problem:
            refused["sd_vae"] = problem
            del clean["sd_vae"]
    if changes.get(CHECKPOINT_SETTING):
        wanted = changes[CHECKPOINT_SETTING]
        clean[CHECKPOINT_SETTING] = context.checkpoints.check_loadable(context.checkpoints.find(str(wanted))).title
    if api and refused:
        return SettingsChangeReport(refused=MappingProxyType(refused))
    changed = context.user_choices.set(user.name, clean)
    return SettingsChangeReport(changed=tuple(changed), refused=MappingProxyType(refused))


# Settings that name a listed upscaler (their choices are the model folders' files, so they are checked here).
UPSCALER_SETTINGS = ("upscaler_for_img2img",)


def _vae_problem(context: AppContext, name: str, *, api: bool) -> str | None:
    """Why `name` cannot be the SD VAE (it is not a listed file), or None; says how to refresh."""
    choices = context.vaes.choices()
    if name in choices:
        return None
    if api:
        return (f"setting 'sd_vae' must be one of {choices}, got {name!r}; POST /sdapi/v1/refresh-vae after "
                "adding a file")
    from modules.library.vae_files import UnknownVaeError

    return str(UnknownVaeError(name, choices))


def _apply_to_model(context: AppContext, changed: list[str], before: Mapping[str, Any],
                    stored_before: Mapping[str, Any], clean: Mapping[str, Any]) -> SettingsChangeReport:
    """Apply the stored `changed` keys to the loaded model (A1111's onchange); on failure put their
    previous values back and report why."""
    applied = [key for key in changed if context.applies_change(key)]
    if not applied:
        return SettingsChangeReport(changed=tuple(changed))
    try:
        context.settings_changed(applied)
    except Exception as error:  # noqa: BLE001 - any failure to apply puts the previous value back; reported
        context.settings.put_back({key: stored_before[key] for key in applied if key in stored_before},
                                  {key: clean[key] for key in applied})
        reverted = {key: f"setting {key!r} is back to {before[key]!r}: applying {clean[key]!r} failed: "
                         f"{_reason(error)}" for key in applied}
        return SettingsChangeReport(changed=tuple(key for key in changed if key not in applied),
                                    reverted=MappingProxyType(reverted), failure=error)
    vae = VAE_SETTINGS.intersection(applied) and context.models.current() is not None
    notes = ("The VAE of the current model was updated.",) if vae else ()
    return SettingsChangeReport(changed=tuple(changed), notes=notes)


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
