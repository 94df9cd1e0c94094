"""Translate between A1111's API shapes and the studio's own request/result types.

Fields we honour are mapped onto `Txt2ImgRequest` / `Img2ImgRequest`. A field we cannot honour is
accepted at its default (or a value that changes nothing) and refused with a
message naming it otherwise: a client must never get a picture made without
the setting it asked for. `comments`, `do_not_save_grid`, `eta`,
`firstphase_*` and `override_settings_restore_afterwards` are ignored
(overrides never touch the global options here anyway); `force_task_id` names
the job for /progress (routes.py). For img2img,
`image_cfg_scale` is ignored as A1111 ignores it for models that are not
instruct-pix2pix (which this studio does not run).
"""
from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import ValidationError

from backend.api.controlnet_units import CONTROLNET_SCRIPT, UnitError, units_from_api
from backend.api.schemas import StableDiffusionImg2ImgProcessingAPI as ApiImg2Img
from backend.api.schemas import StableDiffusionTxt2ImgProcessingAPI as ApiTxt2Img
from backend.api.schemas import _ProcessingAPI as ApiProcessing
from backend.api.script_args import ScriptArgsError, extension_fields, script_fields
from backend.generation.request import MASKED_CONTENT, HiresFix, Img2ImgRequest, Txt2ImgRequest
from backend.generation.samplers import BUILTIN_SAMPLERS, SCHEDULE_TYPES, SamplerCatalog, resolve_schedule_type
from backend.images.infotext import parse_infotext
from backend.images.loading import (
    ImageInputError,
    base64_payload,
    open_image,
    open_mask,
)
from backend.images.remote import fetch_image_bytes, is_url
from backend.images.resize import RESIZE_MODES
from backend.settings import Options


class ApiFieldError(ValueError):
    """Request fields we refuse; `problems` holds (A1111 field name, reason) pairs."""

    status_code = 422

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))


class ForbiddenFieldError(ApiFieldError):
    """Fields a client may not set through the API at all (folder paths)."""

    status_code = 403


# --- schedule types -------------------------------------------------------

def scheduler_api_name(label: str) -> str:
    """A1111's lowercase API name for a schedule type label: "SGM Uniform" -> "sgm_uniform"."""
    return label.lower().replace(" ", "_")


def resolve_scheduler(name: str | None) -> str:
    """Our label for an A1111 schedule type given as label or API name; unknown names pass through."""
    if not name:
        return "Automatic"
    try:
        return resolve_schedule_type(name)
    except ValueError:
        return name  # Txt2ImgRequest's validator names the field and lists the choices


def _samplers(catalog) -> SamplerCatalog:
    """The studio's samplers (the extensions' among them); without a catalog, the built-in table."""
    return catalog.samplers if catalog is not None else BUILTIN_SAMPLERS


def _sampler(name: str, samplers: SamplerCatalog) -> str:
    try:
        return samplers.resolve(name)
    except (KeyError, ValueError):
        return name  # Txt2ImgRequest's validator names the field and lists the choices


# --- fields we cannot honour ----------------------------------------------

def _is(*neutral: Any) -> Callable[[Any], bool]:
    return lambda value: value in neutral


# field -> (value is harmless?, why we refuse other values)
_UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "s_min_uncond": (_is(None, 0), "s_min_uncond is not supported"),
    "s_churn": (_is(None, 0), "s_churn is not supported"),
    "s_tmin": (_is(None, 0), "s_tmin is not supported"),
    "s_tmax": (lambda v: v in (None, 0) or v == math.inf, "s_tmax is not supported"),
    "s_noise": (_is(None, 1), "s_noise is not supported"),
}
_UNSUPPORTED_TXT2IMG = {
    "firstpass_image": (_is(None, ""), "a first-pass image is not supported"),
}
_UNSUPPORTED_IMG2IMG = {
    "mask_round": (_is(True), "an unrounded latent mask is not supported"),
    "initial_noise_multiplier": (_is(None, 1), "initial_noise_multiplier is not supported"),
    "latent_mask": (_is(None, ""), "a separate latent mask is not supported"),
}

_HIRES_SAME = {
    "hr_checkpoint_name": "Use same checkpoint",
    "hr_sampler_name": "Use same sampler",
    "hr_scheduler": "Use same scheduler",
}


SD_UPSCALE = "sd upscale"


def _refusals(req: ApiProcessing, sampler: str, scheduler: str, samplers: SamplerCatalog) -> list[tuple[str, str]]:
    unsupported = _UNSUPPORTED | (_UNSUPPORTED_IMG2IMG if isinstance(req, ApiImg2Img) else _UNSUPPORTED_TXT2IMG)
    problems = [(f, why) for f, (ok, why) in unsupported.items() if not ok(getattr(req, f))]
    if req.disable_extra_networks and "<" in req.prompt + req.negative_prompt:
        problems.append(("disable_extra_networks", "cannot ignore <...> networks in the prompt"))
    if isinstance(req, ApiImg2Img) and req.mask_blur is None and req.mask_blur_x != req.mask_blur_y:
        problems.append(("mask_blur_x/mask_blur_y", "different horizontal and vertical blur is not supported"))
    if isinstance(req, ApiTxt2Img) and req.enable_hr:
        same = {
            "hr_checkpoint_name": req.hr_checkpoint_name in (None, "", _HIRES_SAME["hr_checkpoint_name"]),
            "hr_sampler_name": req.hr_sampler_name in (None, "", _HIRES_SAME["hr_sampler_name"])
            or _sampler(req.hr_sampler_name, samplers) == sampler,
            "hr_scheduler": req.hr_scheduler in (None, "", _HIRES_SAME["hr_scheduler"])
            or resolve_scheduler(req.hr_scheduler) == scheduler,
            "hr_prompt": req.hr_prompt in ("", req.prompt),
            "hr_negative_prompt": req.hr_negative_prompt in ("", req.negative_prompt),
        }
        problems += [(f, "a different second-pass value is not supported") for f, ok in same.items() if not ok]
    return problems


# override_settings key -> Txt2ImgRequest field
_OVERRIDABLE = {"sd_model_checkpoint": "checkpoint", "CLIP_stop_at_last_layers": "clip_skip", "sd_vae": "vae",
                "face_restoration_model": "face_restoration_model", "code_former_weight": "code_former_weight",
                "face_restoration": "restore_faces", "tiling": "tiling"}


def _overrides(overrides: dict[str, Any], options: Options) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Request fields from override_settings; other keys only when they change nothing."""
    fields: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    current = options.model_dump()
    for key, value in overrides.items():
        where = f"override_settings.{key}"
        if key in _OVERRIDABLE:
            if value not in (None, ""):
                fields[_OVERRIDABLE[key]] = value
        elif key not in Options.model_fields:
            problems.append((where, "unknown option"))
        else:
            try:
                same = Options.model_validate({**current, key: value}) == options
            except ValidationError:
                same = False
            if not same:
                problems.append((where, "this option cannot be overridden per request"))
    return fields, problems


# --- infotext -------------------------------------------------------------

# infotext key -> A1111 request field, as A1111's "paste fields" for txt2img
_INFOTEXT_FIELDS = {
    "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps",
    "Sampler": "sampler_name", "Schedule type": "scheduler", "CFG scale": "cfg_scale",
    "Seed": "seed", "Size-1": "width", "Size-2": "height",
    "Variation seed": "subseed", "Variation seed strength": "subseed_strength",
    "Seed resize from-1": "seed_resize_from_w", "Seed resize from-2": "seed_resize_from_h",
    "Denoising strength": "denoising_strength", "Hires upscale": "hr_scale",
    "Hires upscaler": "hr_upscaler", "Hires steps": "hr_second_pass_steps",
    "Hires resize-1": "hr_resize_x", "Hires resize-2": "hr_resize_y",
    "Hires checkpoint": "hr_checkpoint_name", "Hires sampler": "hr_sampler_name",
    "Hires schedule type": "hr_scheduler", "Hires prompt": "hr_prompt",
    "Hires negative prompt": "hr_negative_prompt",
}


# infotext value -> img2img request value
_INFOTEXT_IMG2IMG = {
    "Mask blur": ("mask_blur", int),
    "Masked content": ("inpainting_fill", MASKED_CONTENT.index),
    "Inpaint area": ("inpaint_full_res", lambda v: v == "Only masked"),
    "Masked area padding": ("inpaint_full_res_padding", int),
    "Mask mode": ("inpainting_mask_invert", lambda v: int(v == "Inpaint not masked")),
    "Resize mode": ("resize_mode", RESIZE_MODES.index),
}


def apply_infotext(req: ApiProcessing) -> ApiProcessing:
    """Fill the fields the client did not set from `req.infotext`, like A1111 1.8+."""
    if not req.infotext:
        return req
    params = parse_infotext(req.infotext)
    fields = type(req).model_fields
    values: dict[str, Any] = {f: params[k] for k, f in _INFOTEXT_FIELDS.items() if k in params and f in fields}
    if isinstance(req, ApiTxt2Img) and "Denoising strength" in params and any(
            k in params for k in ("Hires upscale", "Hires upscaler", "Hires resize-1")):
        values["enable_hr"] = True
    if "Face restoration" in params and "restore_faces" in fields:
        values["restore_faces"] = True
    if "Tiling" in params:
        values["tiling"] = params["Tiling"] in (True, "True", "true")
    if isinstance(req, ApiImg2Img):
        for key, (field, read) in _INFOTEXT_IMG2IMG.items():
            if key in params:
                try:
                    values[field] = read(params[key])
                except ValueError:
                    pass  # a value this studio does not know: keep the default
    overrides = dict(req.override_settings)
    if "Clip skip" in params:
        overrides.setdefault("CLIP_stop_at_last_layers", params["Clip skip"])
    explicit = req.model_dump(exclude_unset=True)
    merged = {**values, **explicit, "override_settings": overrides, "infotext": None}
    return type(req).model_validate(merged)


# --- request --------------------------------------------------------------

_FIELD_NAMES = {  # our field path -> A1111 field name, for error messages
    "hires.upscaler": "hr_upscaler", "hires.upscale_by": "hr_scale",
    "hires.resize_x": "hr_resize_x", "hires.resize_y": "hr_resize_y",
    "hires.steps": "hr_second_pass_steps", "hires.denoising_strength": "denoising_strength",
    "checkpoint": "override_settings.sd_model_checkpoint",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "vae": "override_settings.sd_vae",
    "refiner.checkpoint": "refiner_checkpoint", "refiner.switch_at": "refiner_switch_at",
}


def _validation_problems(err: ValidationError, req: ApiProcessing) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if path == "sampler_name" and not req.sampler_name:
            field = "sampler_index"
        elif not path and getattr(req, "enable_hr", False):  # the only whole-request check: the hires size
            field = "hr_resize_x/hr_resize_y" if req.hr_resize_x or req.hr_resize_y else "hr_scale"
        else:
            field = _FIELD_NAMES.get(path, path or "request")
        msg = e["msg"].removeprefix("Value error, ")
        problems.append((field, msg))
    return problems


def _script_fields(req: ApiProcessing, catalog, kind: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """script_name / script_args and the extensions' alwayson_scripts entries, as our request's fields."""
    fields: dict[str, Any] = {}
    try:
        # every entry but ControlNet must be an extension's accordion (none without a catalog)
        fields["extension_args"] = extension_fields(getattr(catalog, "hooks", None), req.alwayson_scripts,
                                                    {CONTROLNET_SCRIPT})
        if (req.script_name or "").strip().lower() != SD_UPSCALE or kind != "img2img":
            if req.script_name and not hasattr(catalog, "find_script"):
                return fields, [("script_name", f"no script {req.script_name!r} here")]
            fields.update(script_fields(catalog, req.script_name, req.script_args, kind))
    except ScriptArgsError as err:
        return fields, err.problems
    return fields, []


def _shared_fields(req: ApiProcessing, options: Options, catalog=None) -> dict[str, Any]:
    """Our request fields common to txt2img and img2img; raises ApiFieldError for refused ones.

    `catalog` (the generation service) knows the scripts and the extensions' always-on accordions."""
    samplers = _samplers(catalog)
    sampler_name = req.sampler_name or req.sampler_index
    sampler = _sampler(sampler_name, samplers)
    scheduler = resolve_scheduler(req.scheduler)
    _, legacy_schedule = samplers.split_legacy_name(sampler_name)  # "DPM++ 2M Karras", pre-1.9 style
    if legacy_schedule and scheduler == "Automatic":
        scheduler = legacy_schedule
    problems = _refusals(req, sampler, scheduler, samplers)
    overridden, override_problems = _overrides(req.override_settings, options)
    problems += override_problems
    scripted, script_problems = _script_fields(req, catalog, "img2img" if isinstance(req, ApiImg2Img) else "txt2img")
    problems += script_problems
    if samplers.knows(sampler) and scheduler in SCHEDULE_TYPES:
        try:
            samplers.effective_schedule(sampler, scheduler)
        except ValueError as err:  # e.g. "Euler a" has no Karras schedule
            problems.append(("scheduler", str(err)))
    units = []
    try:
        units = units_from_api(req.alwayson_scripts, lambda data, what: _api_image(data, what, options, open_image))
    except UnitError as err:
        problems += err.problems
    if problems:
        raise ApiFieldError(problems)
    fields: dict[str, Any] = dict(
        prompt=req.prompt, negative_prompt=req.negative_prompt, styles=req.styles,
        sampler_name=sampler, scheduler=scheduler, steps=req.steps, cfg_scale=req.cfg_scale,
        width=req.width, height=req.height, seed=req.seed, batch_size=req.batch_size,
        n_iter=req.n_iter, clip_skip=options.CLIP_stop_at_last_layers,
        save_images=req.save_images, controlnet_units=units,
        # None = the setting, as A1111 (its UI keeps both as settings since 1.6)
        restore_faces=options.face_restoration if req.restore_faces is None else req.restore_faces,
        tiling=options.tiling if req.tiling is None else req.tiling,
        subseed=req.subseed, subseed_strength=req.subseed_strength,
        # A1111 sends -1 or 0 for "off"; the noise is drawn at that size only when both are set
        seed_resize_from_w=max(req.seed_resize_from_w, 0), seed_resize_from_h=max(req.seed_resize_from_h, 0),
        refiner=_refiner(req),
        **scripted,
    )
    fields.update(overridden)
    # The settings stand in for restore_faces / tiling only when the request leaves them out (null).
    for field in ("restore_faces", "tiling"):
        if getattr(req, field) is not None:
            fields[field] = getattr(req, field)
    return fields


def _refiner(req: ApiProcessing) -> dict[str, Any]:
    """A1111's refiner_checkpoint / refiner_switch_at; "None" or no name: no refiner; no switch point: 0.8."""
    if req.refiner_checkpoint is None or req.refiner_checkpoint.strip().lower() in ("", "none"):
        return {}
    return {"checkpoint": req.refiner_checkpoint,
            "switch_at": 0.8 if req.refiner_switch_at is None else req.refiner_switch_at}


def _validate(model: type, fields: dict[str, Any], req: ApiProcessing, catalog=None):
    try:
        # The studio's context: its samplers, and its prompt length limit (a 422 before the job is queued).
        context = catalog.request_context if catalog is not None else {"samplers": BUILTIN_SAMPLERS}
        return model.model_validate(fields, context=context)
    except ValidationError as err:
        raise ApiFieldError(_validation_problems(err, req)) from err


def to_txt2img_request(req: ApiTxt2Img, options: Options, catalog=None) -> Txt2ImgRequest:
    """Our request for an A1111 txt2img payload; raises ApiFieldError naming A1111 fields.

    `override_settings.sd_model_checkpoint` becomes `checkpoint` of this one
    request; the global option is never changed.
    """
    req = apply_infotext(req)
    fields = _shared_fields(req, options, catalog)
    if req.enable_hr:
        fields["hires"] = dict(
            enabled=True, upscaler=req.hr_upscaler or "Latent", upscale_by=req.hr_scale,
            resize_x=req.hr_resize_x, resize_y=req.hr_resize_y,
            steps=req.hr_second_pass_steps, denoising_strength=req.denoising_strength,
        )
    else:
        fields["hires"] = HiresFix()
    return _validate(Txt2ImgRequest, fields, req, catalog)


def _choice(field: str, value: int, choices: tuple[str, ...]) -> str:
    if not 0 <= value < len(choices):
        raise ApiFieldError([(field, f"must be 0..{len(choices) - 1} ({', '.join(choices)}), got {value}")])
    return choices[value]


def _api_image(data: str, what: str, options: Options, open_as: Callable[[bytes, str], Image.Image]) -> Image.Image:
    """base64 as A1111 sends it, or an http(s) URL where the server allows them (never a local address)."""
    raw = fetch_image_bytes(data, what, allowed=options.api_enable_requests) if is_url(data) \
        else base64_payload(data, what)
    return open_as(raw, what)


def _sd_upscale(req: ApiImg2Img, upscaler_names: list[str]) -> dict[str, Any]:
    """A1111's SD upscale script_args: [info (ignored), overlap, upscaler index (or name), scale factor]."""
    args = list(req.script_args) + [None] * 4
    _, overlap, upscaler, scale = args[:4]
    if isinstance(upscaler, int) and not isinstance(upscaler, bool):
        if not 0 <= upscaler < len(upscaler_names):
            raise ApiFieldError([("script_args.2", f"upscaler index {upscaler} is not one of the {len(upscaler_names)} "
                                                   f"upscalers: {', '.join(upscaler_names)}")])
        upscaler = upscaler_names[upscaler]
    return {"enabled": True, "overlap": 64 if overlap is None else overlap,
            "upscaler": upscaler or "None", "scale_factor": 2.0 if scale is None else scale}


def to_img2img_request(req: ApiImg2Img, options: Options, upscaler_names: list[str] | None = None,
                       catalog=None) -> Img2ImgRequest:
    """Our request for an A1111 img2img payload (images decoded); raises ApiFieldError.

    `upscaler_names` (the /upscalers order) resolves the SD upscale script's upscaler index."""
    req = apply_infotext(req)
    fields = _shared_fields(req, options, catalog)
    if not req.init_images:
        raise ApiFieldError([("init_images", "at least one base64 image is required")])
    images, problems = [], []
    for index, data in enumerate(req.init_images):
        try:
            images.append(_api_image(data, f"init image {index}", options, open_image))
        except ImageInputError as err:
            problems.append((f"init_images.{index}", str(err)))
    mask = None
    if req.mask:
        try:
            mask = _api_image(req.mask, "the mask", options, open_mask)
        except ImageInputError as err:
            problems.append(("mask", str(err)))
    if problems:
        raise ApiFieldError(problems)
    fields.update(
        init_images=images, mask=mask, denoising_strength=req.denoising_strength,
        resize_mode=_choice("resize_mode", req.resize_mode, RESIZE_MODES),
        mask_blur=req.mask_blur if req.mask_blur is not None else req.mask_blur_x,
        inpainting_fill=_choice("inpainting_fill", req.inpainting_fill, MASKED_CONTENT),
        inpaint_full_res=req.inpaint_full_res, inpaint_full_res_padding=req.inpaint_full_res_padding,
        inpainting_mask_invert=bool(req.inpainting_mask_invert),
    )
    if (req.script_name or "").strip().lower() == SD_UPSCALE:
        fields["sd_upscale"] = _sd_upscale(req, upscaler_names or ["None", "Lanczos", "Nearest"])
    return _validate(Img2ImgRequest, fields, req, catalog)


# --- results --------------------------------------------------------------

def encode_png_base64(image: Image.Image, infotext: str | None, extras_info: str = "") -> str:
    """Base64 PNG with the A1111 `parameters` text chunk (and `extras`, for what the Extras tab did)."""
    meta = PngInfo()
    if infotext:
        meta.add_text("parameters", infotext)
    if extras_info:
        meta.add_text("extras", extras_info)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def result_images(result: Any, send: bool) -> list[str]:
    """The response's base64 PNGs, each with its own infotext."""
    if not send:
        return []
    texts = list(result.infotexts)
    images = [encode_png_base64(image, texts[i] if i < len(texts) else None) for i, image in enumerate(result.images)]
    # As sd-webui-controlnet: the maps the units used come after the pictures (a setting hides them).
    return images + [encode_png_base64(m, None) for m in getattr(result, "control_maps", [])]


def result_info(result: Any) -> str:
    """The `info` JSON string of a txt2img response (A1111 keys, seeds and infotexts included)."""
    info = dict(getattr(result, "info", None) or {})
    seeds = list(result.seeds)
    info.setdefault("all_seeds", seeds)
    info.setdefault("seed", seeds[0] if seeds else -1)
    info.setdefault("infotexts", list(result.infotexts))
    info.setdefault("warnings", list(getattr(result, "warnings", [])))  # not A1111's; what the UI shows as ⚠
    return json.dumps(info, default=str, ensure_ascii=False)
