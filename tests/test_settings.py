"""Options and OptionsStore: validation, atomic config.json, listeners."""
from __future__ import annotations

import json
import logging
import threading

import pytest
from pydantic import ValidationError

from backend.settings import PATH_OPTIONS, Options, OptionsStore


def _store(tmp_path) -> OptionsStore:
    store = OptionsStore(tmp_path / "config.json")
    store.load()
    return store


def test_defaults():
    opts = Options()
    assert opts.outdir_txt2img_samples == "outputs/txt2img-images"
    assert opts.outdir_img2img_samples == "outputs/img2img-images"
    assert opts.outdir_extras_samples == "outputs/extras-images"
    assert opts.outdir_txt2img_grids == "outputs/txt2img-grids"
    assert opts.samples_filename_pattern == ""
    assert opts.samples_format == "png"
    assert opts.save_to_dirs is True
    assert opts.jpeg_quality == 80
    assert opts.live_previews_enable is True
    assert opts.show_progress_every_n_steps == 5
    assert opts.sd_checkpoints_limit == 1
    assert opts.default_sampler == "Euler a"
    assert opts.sd_model_checkpoint == ""
    assert opts.CLIP_stop_at_last_layers == 1


def test_every_field_is_described_and_paths_are_marked():
    for name, info in Options.model_fields.items():
        assert info.description and len(info.description) > 10, name
    assert PATH_OPTIONS <= set(Options.model_fields)
    assert {n for n in Options.model_fields if n.startswith("outdir_") or n.endswith("_dir")} == PATH_OPTIONS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("samples_format", "gif"),
        ("sd_checkpoints_limit", 0),
        ("sd_checkpoints_limit", 11),
        ("jpeg_quality", 101),
        ("show_progress_every_n_steps", -1),
        ("CLIP_stop_at_last_layers", 0),
        ("save_to_dirs", "maybe"),
    ],
)
def test_model_rejects_bad_values(field, value):
    with pytest.raises(ValidationError, match=field):
        Options(**{field: value})
    opts = Options()
    with pytest.raises(ValidationError, match=field):
        setattr(opts, field, value)  # validate_assignment


def test_missing_file_gives_defaults_and_writes_nothing(tmp_path):
    store = _store(tmp_path)
    assert store.options == Options()
    assert list(tmp_path.iterdir()) == []


def test_update_saves_atomically_and_reloads_equal(tmp_path):
    store = _store(tmp_path)
    new = store.update(samples_format="webp", jpeg_quality=90, sd_checkpoints_limit=3)
    assert new.samples_format == "webp" and store.options == new
    # Only config.json: no temp file left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    saved = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert saved["samples_format"] == "webp" and saved["jpeg_quality"] == 90

    again = _store(tmp_path)
    assert again.options == new


@pytest.mark.parametrize(
    "changes",
    [
        {"samples_format": "bmp"},
        {"jpeg_quality": 90, "sd_checkpoints_limit": 99},  # one good, one bad
        {"no_such_option": 1},
    ],
)
def test_bad_update_changes_nothing(tmp_path, changes):
    store = _store(tmp_path)
    store.update(jpeg_quality=70)
    before = (tmp_path / "config.json").read_bytes()
    calls = []
    store.subscribe(lambda old, new: calls.append(new))
    with pytest.raises(ValidationError) as err:
        store.update(**changes)
    bad_field = [k for k in changes if k != "jpeg_quality"][0]
    assert bad_field in str(err.value)
    assert (tmp_path / "config.json").read_bytes() == before
    assert store.options.jpeg_quality == 70
    assert calls == []


def test_listeners_get_old_and_new(tmp_path):
    store = _store(tmp_path)
    calls = []
    store.subscribe(lambda old, new: calls.append((old.live_previews_enable,
                                                   new.live_previews_enable)))
    store.update(live_previews_enable=False)
    store.update(live_previews_enable=False)  # no change: no call
    assert calls == [(True, False)]


def test_broken_listener_does_not_block_others(tmp_path, caplog):
    store = _store(tmp_path)
    seen = []

    def broken(old, new):
        raise RuntimeError("boom")

    store.subscribe(broken)
    store.subscribe(lambda old, new: seen.append(new.jpeg_quality))
    with caplog.at_level(logging.ERROR):
        store.update(jpeg_quality=50)
    assert seen == [50]
    assert store.options.jpeg_quality == 50
    assert "boom" in caplog.text


def test_options_property_is_a_copy(tmp_path):
    store = _store(tmp_path)
    store.options.jpeg_quality = 10
    assert store.options.jpeg_quality == 80


def test_invalid_json_keeps_defaults_and_names_file(tmp_path, caplog):
    path = tmp_path / "config.json"
    path.write_text("{not json", encoding="utf-8")
    store = OptionsStore(path)
    with caplog.at_level(logging.WARNING):
        opts = store.load()
    assert opts == Options()
    assert str(path) in caplog.text


def test_unknown_keys_kept_aside_and_preserved(tmp_path, caplog):
    # Shaped like an A1111 config.json: many keys we do not use.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"samples_format": "jpg", "grid_format": "png",
                                "sd_vae_overrides_per_model_preferences": True}), encoding="utf-8")
    store = OptionsStore(path)
    with caplog.at_level(logging.INFO):
        store.load()
    assert store.options.samples_format == "jpg"
    assert store.unknown_keys == {"grid_format": "png", "sd_vae_overrides_per_model_preferences": True}
    assert "grid_format" in caplog.text
    store.update(jpeg_quality=60)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["grid_format"] == "png" and saved["jpeg_quality"] == 60


def test_one_bad_value_in_file_keeps_the_rest(tmp_path, caplog):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"jpeg_quality": 500, "samples_format": "webp"}), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        opts = OptionsStore(path).load()
    assert opts.jpeg_quality == 80 and opts.samples_format == "webp"
    assert "jpeg_quality" in caplog.text


def test_load_notifies_when_file_changed(tmp_path):
    store = _store(tmp_path)
    calls = []
    store.subscribe(lambda old, new: calls.append(new.default_sampler))
    (tmp_path / "config.json").write_text(json.dumps({"default_sampler": "DPM++ 2M"}))
    store.load()
    assert calls == ["DPM++ 2M"]


def test_concurrent_updates_leave_a_valid_file(tmp_path):
    store = _store(tmp_path)

    def worker(q):
        for _ in range(10):
            store.update(jpeg_quality=q)

    threads = [threading.Thread(target=worker, args=(q,)) for q in range(40, 48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert saved["jpeg_quality"] == store.options.jpeg_quality
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
