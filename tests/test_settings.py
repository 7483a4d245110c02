"""Settings: validation per field, A1111's flat config.json, overrides that never mutate the store."""

from __future__ import annotations

import json

import pytest

from modules.serving.settings import SCHEMA, SECTIONS, SettingsStore, SettingsValidationError, describe_changes


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


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\udcff"])
def test_corrupt_config_is_moved_to_tmp_and_defaults_used(tmp_path, caplog, text):
    path = tmp_path / "config.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    store = SettingsStore(path)
    assert store.current()["sd_checkpoints_limit"] == 1
    assert not path.exists()
    assert (tmp_path / "tmp" / "config.json").read_bytes() == text.encode("utf-8", "surrogateescape")
    assert "corrupted" in caplog.text and str(tmp_path / "tmp" / "config.json") in caplog.text
    store.apply({"sd_checkpoints_limit": 2})  # a fresh file, A1111's format
    assert json.loads(path.read_text()) == {"sd_checkpoints_limit": 2}


def test_a_second_corrupt_config_does_not_overwrite_the_first(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{first")
    SettingsStore(path)
    path.write_text("{second")
    SettingsStore(path)
    kept = sorted(p.read_text() for p in (tmp_path / "tmp").iterdir())
    assert kept == ["{first", "{second"]


def test_unreadable_config_is_an_error_not_moved(tmp_path):
    path = tmp_path / "config.json"
    path.mkdir()  # reading it fails with an OSError: not corrupt, so it must stay where it is
    with pytest.raises(OSError, match="cannot read the settings file"):
        SettingsStore(path)
    assert path.is_dir() and not (tmp_path / "tmp").exists()


def test_bad_stored_value_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"sd_checkpoints_limit": "three", "jpeg_quality": 90.0}))
    current = SettingsStore(path).current()
    assert current["sd_checkpoints_limit"] == 1 and "sd_checkpoints_limit" in caplog.text
    assert current["jpeg_quality"] == 90 and isinstance(current["jpeg_quality"], int)  # int and float agree


def test_written_in_a1111_flat_format(tmp_path):
    path = tmp_path / "config.json"
    store = SettingsStore(path)
    store.apply({"samples_filename_pattern": "[seed]-café", "quicksettings_list": ["sd_model_checkpoint", "sd_vae"]})
    text = path.read_text(encoding="utf-8")
    assert "café" in text and '\n    "samples_filename_pattern"' in text  # ensure_ascii off, indent 4
    assert json.loads(text) == {"samples_filename_pattern": "[seed]-café",
                                "quicksettings_list": ["sd_model_checkpoint", "sd_vae"]}
    assert SettingsStore(path).current()["quicksettings_list"] == ("sd_model_checkpoint", "sd_vae")


def test_a1111_renamed_keys_are_migrated(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"quicksettings": "sd_model_checkpoint, sd_vae,CLIP_stop_at_last_layers",
                                "sd_vae_as_default": False}))
    current = SettingsStore(path).current()
    assert current["quicksettings_list"] == ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
    assert current["sd_vae_overrides_per_model_preferences"] is False
    path.write_text(json.dumps({"quicksettings": "sd_vae", "quicksettings_list": ["sd_model_checkpoint"]}))
    assert SettingsStore(path).current()["quicksettings_list"] == ("sd_model_checkpoint",)  # the new key wins


@pytest.mark.parametrize("changes, message", [
    ({"quicksettings_list": "sd_vae"}, "list of text items"),
    ({"quicksettings_list": ["sd_vae", 3]}, "list of text items"),
    ({"samples_format": "xyz"}, "image file extension"),
    ({"img_downscale_threshold": -1}, "at least 0"),
    ({"n_rows": -2}, "between -1 and 16"),
    ({"save_images_replace_action": "Overwrite"}, "one of"),
    ({"eta_noise_seed_delta": None}, "must be a number"),
])
def test_new_settings_validate(tmp_path, changes, message):
    store = SettingsStore(tmp_path / "config.json")
    with pytest.raises(ValueError, match=message) as error:
        store.apply(changes)
    assert next(iter(changes)) in str(error.value)


def test_image_formats_pillow_writes_are_accepted(tmp_path):
    store = SettingsStore(tmp_path / "config.json")
    assert store.apply({"samples_format": "webp", "grid_format": "JPG"}) == ["samples_format", "grid_format"]


def test_every_default_obeys_its_own_rules():
    for spec in SCHEMA:
        assert spec.validate(spec.default) == spec.default, spec.key
        assert spec.section in SECTIONS, spec.key
    assert len({spec.key for spec in SCHEMA}) == len(SCHEMA)


def test_apply_names_every_bad_field_and_saves_nothing(tmp_path):
    store = SettingsStore(tmp_path / "config.json")
    with pytest.raises(SettingsValidationError) as error:
        store.apply({"sd_checkpoints_limit": 0, "jpeg_quality": 0, "randn_source": "CPU"})
    assert set(error.value.errors) == {"sd_checkpoints_limit", "jpeg_quality"}
    assert "between 1 and 100" in error.value.errors["jpeg_quality"]
    assert store.current()["randn_source"] == "GPU"


def test_describe_changes_like_a1111():
    assert describe_changes(["a", "b"]) == "2 settings changed: a, b."
    assert describe_changes(["a"]) == "1 setting changed: a."
    assert describe_changes([]) == "0 settings changed."


def test_overrides_return_a_new_snapshot(tmp_path):
    store = SettingsStore(tmp_path / "config.json")
    base = store.current()
    changed = base.with_overrides({"sd_checkpoints_limit": 4})
    assert changed.sd_checkpoints_limit == 4 and base.sd_checkpoints_limit == 1
    assert store.current().sd_checkpoints_limit == 1
    with pytest.raises(ValueError):
        base.with_overrides({"sd_checkpoints_limit": 99})
