"""Every A1111 1.10 option key on /sdapi/v1/options: A1111's defaults where the studio has no setting, the
studio's values where it has, A1111-only keys stored in config.json, folders and unknown keys refused."""
from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.a1111_options import HTML_OPTIONS, a1111_defaults, a1111_version, type_problem
from backend.api.routes import create_api_router
from backend.settings import Options, OptionsStore

API = "/sdapi/v1"

# Keys A1111 clients read (webuiapi, A1111's own test/test_utils.py, Krita's and Photoshop's plug-ins, chat front
# ends that drive A1111) with A1111 1.10's defaults, written from A1111's modules/shared_options.py.
A1111_CLIENT_KEYS = {
    "samples_save": True, "samples_format": "png", "samples_filename_pattern": "", "save_images_add_number": True,
    "grid_save": True, "grid_format": "png", "grid_extended_filename": False, "grid_only_if_multiple": True,
    "n_rows": -1, "enable_pnginfo": True, "save_txt": False, "jpeg_quality": 80, "webp_lossless": False,
    "export_for_4chan": True, "img_max_size_mp": 200, "use_original_name_batch": True, "save_init_img": False,
    "outdir_samples": "", "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images", "outdir_extras_samples": "outputs/extras-images",
    "outdir_grids": "", "outdir_txt2img_grids": "outputs/txt2img-grids",
    "outdir_img2img_grids": "outputs/img2img-grids",
    "outdir_save": "log/images", "outdir_init_images": "outputs/init-images", "save_to_dirs": True,
    "grid_save_to_dirs": True, "directories_filename_pattern": "[date]", "ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8,
    "realesrgan_enabled_models": ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"], "upscaler_for_img2img": None,
    "face_restoration": False, "face_restoration_model": "CodeFormer", "code_former_weight": 0.5,
    "face_restoration_unload": False, "api_enable_requests": True, "api_forbid_local_requests": True,
    "sd_model_checkpoint": None, "sd_checkpoints_limit": 1, "sd_checkpoints_keep_in_cpu": True,
    "sd_checkpoint_cache": 0, "sd_unet": "Automatic", "emphasis": "Original", "enable_batch_seeds": True,
    "comma_padding_backtrack": 20, "CLIP_stop_at_last_layers": 1, "upcast_attn": False, "randn_source": "GPU",
    "tiling": False, "hires_fix_refiner_pass": "second pass", "sdxl_crop_top": 0, "sdxl_crop_left": 0,
    "sdxl_refiner_low_aesthetic_score": 2.5, "sdxl_refiner_high_aesthetic_score": 6.0, "sd3_enable_t5": False,
    "sd_vae_checkpoint_cache": 0, "sd_vae": "Automatic", "sd_vae_overrides_per_model_preferences": True,
    "auto_vae_precision": True, "sd_vae_encode_method": "Full", "sd_vae_decode_method": "Full",
    "inpainting_mask_weight": 1.0, "initial_noise_multiplier": 1.0, "img2img_color_correction": False,
    "img2img_fix_steps": False, "img2img_background_color": "#ffffff", "cross_attention_optimization": "Automatic",
    "s_min_uncond": 0.0, "token_merging_ratio": 0.0, "token_merging_ratio_hr": 0.0, "pad_cond_uncond": False,
    "persistent_cond_cache": True, "batch_cond_uncond": True, "use_old_emphasis_implementation": False,
    "interrogate_keep_models_in_memory": False, "interrogate_clip_num_beams": 1, "interrogate_clip_min_length": 24,
    "interrogate_clip_max_length": 48, "interrogate_deepbooru_score_threshold": 0.5, "deepbooru_sort_alpha": True,
    "deepbooru_use_spaces": True, "deepbooru_escape": True, "deepbooru_filter_tags": "",
    "extra_networks_default_multiplier": 1.0, "sd_hypernetwork": "None", "sd_lora": "None",
    "lora_preferred_name": "Alias from file", "lora_add_hashes_to_infotext": True, "lora_functional": False,
    "return_grid": True, "do_not_show_images": False, "send_seed": True, "send_size": True,
    "quicksettings_list": ["sd_model_checkpoint"], "hidden_tabs": [], "ui_reorder_list": [], "localization": "None",
    "add_model_hash_to_info": True, "add_model_name_to_info": True, "add_version_to_infotext": True,
    "disable_weights_auto_swap": True, "show_progressbar": True, "live_previews_enable": True,
    "live_previews_image_format": "png", "show_progress_grid": True, "show_progress_every_n_steps": 10,
    "show_progress_type": "Approx NN", "live_preview_content": "Prompt", "live_preview_refresh_period": 1000,
    "hide_samplers": [], "eta_ddim": 0.0, "eta_ancestral": 1.0, "ddim_discretize": "uniform", "s_churn": 0.0,
    "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0, "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0,
    "eta_noise_seed_delta": 0, "always_discard_next_to_last_sigma": False, "sgm_noise_multiplier": False,
    "uni_pc_variant": "bh1", "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3, "uni_pc_lower_order_final": True,
    "sd_noise_schedule": "Default", "postprocessing_enable_in_main_ui": [], "postprocessing_operation_order": [],
    "upscaling_max_images_in_cache": 5, "disabled_extensions": [], "disable_all_extensions": "none",
    "sd_checkpoint_hash": "", "SWIN_tile": 192, "SWIN_tile_overlap": 8, "canvas_hotkey_zoom": "Alt",
    "canvas_disabled_functions": ["Overlap"], "hypertile_enable_unet": False, "hypertile_max_tile_unet": 256,
    "extra_options_txt2img": [], "extra_options_cols": 1, "img2img_editor_height": 720,
    "unload_models_when_training": False,
    "training_write_csv_every": 500, "dataset_filename_join_string": " ", "memmon_poll_rate": 8,
}

FORGE_PREFIXES = ("forge_", "flux_", "xl_", "sd_t2i_", "sd_i2i_")


@pytest.fixture
def ctx(tmp_path):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings

    (tmp_path / "models").mkdir()  # no checkpoints: these tests only read and write options
    return build_app_context(AppPaths(root=tmp_path, builtin_checkpoints=[]), DeviceSettings.from_flags(device="cpu", precision="full"))


@pytest.fixture
def client(ctx) -> TestClient:
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix=API)
    return TestClient(app, raise_server_exceptions=False)


def _saved(ctx) -> dict:
    path = ctx.root / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


# --- the key list ---------------------------------------------------------------

def test_the_list_has_the_keys_clients_read_with_a1111_defaults():
    defaults = a1111_defaults()
    assert a1111_version() == "1.10"
    assert {k: defaults.get(k, "<missing>") for k in A1111_CLIENT_KEYS} == A1111_CLIENT_KEYS
    assert 250 <= len(defaults) <= 350


def test_the_list_is_a1111s_not_forges():
    keys = set(a1111_defaults())
    assert not [k for k in keys if k.startswith(FORGE_PREFIXES)]
    assert "stealth_pnginfo_option" not in keys
    assert "enable_emphasis" not in keys  # 1.10 replaced it with "emphasis"
    builtin_extensions = {"sd_lora", "lora_bundled_ti_to_infotext", "lora_hide_unknown_for_versions",
                          "lora_in_memory_limit", "lora_not_found_warning_console", "lora_not_found_gradio_warning",
                          "lora_show_all", "canvas_show_tooltip", "canvas_auto_expand", "canvas_blur_prompt",
                          "canvas_hotkey_overlap", "SWIN_torch_compile", "hypertile_swap_size_vae",
                          "extra_options_accordion", *HTML_OPTIONS}
    assert builtin_extensions <= keys


def test_defaults_are_fresh_copies():
    a1111_defaults()["quicksettings_list"].append("x")
    assert a1111_defaults()["quicksettings_list"] == ["sd_model_checkpoint"]


@pytest.mark.parametrize(("value", "default", "ok"), [
    (2, 1.5, True), (2.5, 1, True), (True, 1, False), (1, True, False), ("a", "b", True), (1, "b", False),
    ([], ["x"], True), ("x", ["x"], False), ({"a": 1}, None, True), (None, "x", False), ({}, {}, True),
])
def test_type_check_is_loose(value, default, ok):
    assert (type_problem(value, default) is None) is ok


# --- GET ------------------------------------------------------------------------

def test_get_has_every_a1111_key_and_the_studios_own(client):
    options = client.get(f"{API}/options").json()
    studio = Options().model_dump()
    for key, default in a1111_defaults().items():
        assert key in options, key
        assert options[key] == studio.get(key, default), key
    assert set(studio) <= set(options)  # the studio's own keys that A1111 lacks too
    assert list(options)[:3] == ["samples_save", "samples_format", "samples_filename_pattern"]  # A1111's order


def test_the_studios_defaults_win_where_it_has_the_setting(client):
    options = client.get(f"{API}/options").json()
    assert options["show_progress_every_n_steps"] == 5 and options["api_enable_requests"] is False
    assert options["send_seed"] is True and options["eta_noise_seed_delta"] == 0  # A1111's: no studio setting
    assert options["control_net_unit_count"] == Options().control_net_unit_count


def test_a1111_keys_from_config_json_are_answered_and_a_wrong_type_reads_as_the_default(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"grid_save": False, "n_rows": "many", "samples_format": "jpg",
                                "sd_vae_explanation": "edited"}), encoding="utf-8")
    store = OptionsStore(path)
    store.load()
    options = store.all_options()
    assert options["grid_save"] is False and options["samples_format"] == "jpg"
    assert options["n_rows"] == -1 and options["sd_vae_explanation"] == a1111_defaults()["sd_vae_explanation"]


# --- POST -----------------------------------------------------------------------

def test_an_a1111_only_key_round_trips_and_survives_a_restart(client, ctx):
    assert client.post(f"{API}/options", json={"eta_noise_seed_delta": 31337, "hide_samplers": ["DDIM"]}).json()
    options = client.get(f"{API}/options").json()
    assert options["eta_noise_seed_delta"] == 31337 and options["hide_samplers"] == ["DDIM"]
    assert _saved(ctx)["eta_noise_seed_delta"] == 31337
    again = OptionsStore(ctx.root / "config.json")  # as at the next start
    again.load()
    assert again.all_options()["eta_noise_seed_delta"] == 31337
    assert again.extra_options["hide_samplers"] == ["DDIM"]


def test_a1111s_own_options_write_test(client):
    # A1111's test/test_utils.py::test_options_write, as it sends it.
    pre_value = client.get(f"{API}/options").json()["send_seed"]
    assert client.post(f"{API}/options", json={"send_seed": not pre_value}).status_code == 200
    assert client.get(f"{API}/options").json()["send_seed"] == (not pre_value)
    client.post(f"{API}/options", json={"send_seed": pre_value})
    assert client.get(f"{API}/options").json()["send_seed"] == pre_value


def test_numbers_mix_and_null_defaults_take_anything(client):
    assert client.post(f"{API}/options", json={"img_downscale_threshold": 8, "uni_pc_order": 2.0,
                                               "upscaler_for_img2img": "Lanczos"}).status_code == 200
    options = client.get(f"{API}/options").json()
    assert (options["img_downscale_threshold"], options["uni_pc_order"]) == (8, 2.0)
    assert options["upscaler_for_img2img"] == "Lanczos"


def test_a_wrongly_typed_value_is_422_and_nothing_is_stored(client, ctx):
    before = client.get(f"{API}/options").json()
    r = client.post(f"{API}/options", json={"jpeg_quality": 70, "send_seed": "no", "grid_save": False})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("send_seed: ") and [e["field"] for e in r.json()["errors"]] == ["send_seed"]
    r = client.post(f"{API}/options", json={"eta_noise_seed_delta": 5, "jpeg_quality": 1000})  # a studio key's turn
    assert r.status_code == 422 and "jpeg_quality" in r.json()["detail"]
    assert client.get(f"{API}/options").json() == before
    assert _saved(ctx) == {}


@pytest.mark.parametrize("key", ["outdir_samples", "outdir_grids", "outdir_img2img_grids", "outdir_save",
                                 "outdir_init_images", "temp_dir", "outdir_txt2img_samples", "font"])
def test_folder_keys_are_403(client, ctx, key):
    r = client.post(f"{API}/options", json={key: "/etc", "send_seed": False})
    assert r.status_code == 403 and r.json()["detail"].startswith(f"{key}: ")
    assert client.get(f"{API}/options").json()["send_seed"] is True  # nothing stored
    assert _saved(ctx) == {}


def test_restricted_api_keys_are_403_but_their_unchanged_values_pass(client):
    r = client.post(f"{API}/options", json={"api_forbid_local_requests": False})
    assert r.status_code == 403 and "api_forbid_local_requests" in r.json()["detail"]
    # A client that posts the whole GET answer back, one value changed, is not refused for the rest.
    options = client.get(f"{API}/options").json()
    assert client.post(f"{API}/options", json={**options, "send_size": False}).status_code == 200
    assert client.get(f"{API}/options").json() == {**options, "send_size": False}


def test_unknown_keys_are_422(client):
    r = client.post(f"{API}/options", json={"send_seed": False, "forge_preset": "flux"})
    assert r.status_code == 422 and r.json()["detail"] == "forge_preset: unknown option"
    assert client.get(f"{API}/options").json()["send_seed"] is True


def test_the_studios_own_keys_keep_working(client, ctx):
    assert client.post(f"{API}/options", json={"CLIP_stop_at_last_layers": 2, "samples_save": False}).status_code == 200
    assert ctx.options.options.CLIP_stop_at_last_layers == 2
    options = client.get(f"{API}/options").json()
    assert (options["CLIP_stop_at_last_layers"], options["samples_save"]) == (2, False)
    assert _saved(ctx)["CLIP_stop_at_last_layers"] == 2 and _saved(ctx)["samples_save"] is False


def test_explanations_are_not_settings(client, ctx):
    assert client.post(f"{API}/options", json={"sd_vae_explanation": "<b>changed</b>"}).status_code == 200
    assert client.get(f"{API}/options").json()["sd_vae_explanation"] == a1111_defaults()["sd_vae_explanation"]
    assert "sd_vae_explanation" not in _saved(ctx)


def test_store_update_extra_checks_everything_first_and_tells_listeners(tmp_path):
    from backend.settings import ExtraOptionError

    store = OptionsStore(tmp_path / "config.json")
    store.load()
    calls = []
    store.subscribe(lambda old, new: calls.append(new.jpeg_quality))
    with pytest.raises(ExtraOptionError, match="samples_save"):
        store.update_extra({"jpeg_quality": 60, "samples_save": "yes"})
    assert calls == [] and not (tmp_path / "config.json").exists()
    store.update_extra({"jpeg_quality": 60, "samples_save": False})
    assert calls == [60] and store.extra_options["samples_save"] is False
    store.update(jpeg_quality=70)  # a later studio-only save keeps the kept key
    assert json.loads((tmp_path / "config.json").read_text())["samples_save"] is False


def test_settings_tab_lists_the_kept_options_changed_first(tmp_path):
    from ui.settings_tab import kept_option_rows

    store = OptionsStore(tmp_path / "config.json")
    store.load()
    store.update_extra({"send_seed": False})
    rows = kept_option_rows(store)
    assert rows[0] == ["send_seed", "false", "true"]
    keys = [row[0] for row in rows]
    assert "eta_noise_seed_delta" in keys and "CLIP_stop_at_last_layers" not in keys  # the studio's own: not here
    assert not HTML_OPTIONS & set(keys)
