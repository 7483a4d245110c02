"""Settings: validation per field, A1111's flat config.json, overrides that never mutate the store."""

from __future__ import annotations

import json

import pytest

from modules.settings import SettingsStore


def test_defaults_and_persistence(tmp_path):
    path = tmp_path / "config.json"
    store = SettingsStore(path)
    assert store.current()["sd_checkpoints_limit"] == 1 and store.current().sd_vae == "Automatic"
    assert store.apply({"sd_checkpoints_limit": 3, "sd_vae": "None"}) == ["sd_checkpoints_limit", "sd_vae"]
    assert store.apply({"sd_checkpoints_limit": 3}) == []  # unchanged: nothing written or reported
    assert json.loads(path.read_text()) == {"sd_checkpoints_limit": 3, "sd_vae": "None"}
    assert SettingsStore(path).current()["sd_checkpoints_limit"] == 3


def test_unknown_keys_from_a1111_are_kept(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"samples_format": "png", "sd_checkpoints_limit": 2}))
    store = SettingsStore(path)
    store.apply({"sd_vae": "x.vae.pt"})
    assert json.loads(path.read_text())["samples_format"] == "png"


@pytest.mark.parametrize("changes, message", [
    ({"sd_checkpoints_limit": 0}, "between 1 and 10"),
    ({"sd_checkpoints_limit": 2.5}, "whole number"),
    ({"sd_checkpoints_limit": "2"}, "number"),
    ({"sd_checkpoints_keep_in_cpu": "yes"}, "true or false"),
    ({"sd_vae": 3}, "text"),
])
def test_invalid_values_are_refused_with_the_field_named(tmp_path, changes, message):
    store = SettingsStore(tmp_path / "config.json")
    with pytest.raises(ValueError, match=message) as error:
        store.apply(changes)
    assert next(iter(changes)) in str(error.value)
    assert not (tmp_path / "config.json").exists()


def test_corrupt_config_is_moved_aside(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    store = SettingsStore(path)
    assert store.current()["sd_checkpoints_limit"] == 1
    assert not path.exists() and len(list(tmp_path.glob("config.json.corrupt-*"))) == 1


def test_overrides_return_a_new_snapshot(tmp_path):
    store = SettingsStore(tmp_path / "config.json")
    base = store.current()
    changed = base.with_overrides({"sd_checkpoints_limit": 4})
    assert changed.sd_checkpoints_limit == 4 and base.sd_checkpoints_limit == 1
    assert store.current().sd_checkpoints_limit == 1
    with pytest.raises(ValueError):
        base.with_overrides({"sd_checkpoints_limit": 99})
