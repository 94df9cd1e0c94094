"""User options, stored in config.json under A1111's option names.

A1111 keeps options in a module global (`shared.opts`); here one OptionsStore
object is created at start-up and passed to whoever needs it.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.a1111_options import HTML_OPTIONS, a1111_defaults, type_problem

log = logging.getLogger(__name__)


class Options(BaseModel):
    """Every user option, with the defaults A1111 users expect."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    outdir_txt2img_samples: str = Field(
        "outputs/txt2img-images", description="Folder where text-to-image pictures are saved."
    )
    outdir_img2img_samples: str = Field(
        "outputs/img2img-images", description="Folder where image-to-image pictures are saved."
    )
    outdir_extras_samples: str = Field(
        "outputs/extras-images", description="Folder where upscaled and restored pictures are saved."
    )
    outdir_txt2img_grids: str = Field(
        "outputs/txt2img-grids", description="Folder where grids of text-to-image batches are saved."
    )
    samples_filename_pattern: str = Field(
        "",
        description="Pattern for image file names, e.g. [seed]-[prompt_words]. "
        "Empty means [seed]. A running number is always put in front.",
    )
    samples_format: Literal["png", "jpg", "jpeg", "webp"] = Field(
        "png", description="File format for saved pictures: png, jpg, jpeg or webp."
    )
    save_to_dirs: bool = Field(
        True, description="Save pictures into a sub-folder per day (YYYY-MM-DD)."
    )
    jpeg_quality: int = Field(
        80, ge=1, le=100, description="Quality for JPEG and WebP files, 1 (smallest) to 100 (best)."
    )
    live_previews_enable: bool = Field(
        True, description="Show a preview of the picture while it is being generated."
    )
    show_progress_every_n_steps: int = Field(
        5, ge=0, le=100, description="Update the live preview every this many steps; 0 turns it off."
    )
    show_progress_type: Literal["Full", "Approx NN", "Approx cheap", "TAESD"] = Field(
        "Approx cheap", description="How live previews are made: Full (the VAE: exact, slowest), Approx NN "
                                    "(models/VAE-approx/model.pt), Approx cheap (no file, fastest) or TAESD "
                                    "(models/VAE-approx/taesd_decoder.pth, taesdxl_decoder.pth for SDXL).",
    )
    sd_vae_decode_method: Literal["Full", "TAESD"] = Field(
        "Full", description="Decode finished pictures with the full VAE, or with TAESD for the fastest drafts "
                            "(softer detail; needs the TAESD file in models/VAE-approx).",
    )
    prompt_max_chunks: int = Field(
        32, ge=1, le=1000, description="Longest prompt (and negative prompt), in chunks of 75 tokens; a longer "
                                       "one is refused before it waits for the device.",
    )
    sd_checkpoints_limit: int = Field(
        1, ge=1, le=10, description="How many checkpoints to keep loaded in memory at once."
    )
    sd_checkpoints_keep_in_cpu: bool = Field(
        True, description="Keep the cached checkpoints that are not in use in RAM, not in VRAM: only the current "
                          "one takes GPU memory; switching back moves it to the GPU again (seconds, no disk read).",
    )
    default_sampler: str = Field(
        "Euler a", description="Sampler picked when a new generation does not name one."
    )
    sd_model_checkpoint: str = Field(
        "", description="Checkpoint loaded at start-up; empty means the first one found."
    )
    sd_vae: str = Field(
        "Automatic", description="VAE: Automatic (a .vae file beside the checkpoint, else its own), None (always "
                                 "its own) or a file from models/VAE.",
    )
    api_enable_requests: bool = Field(
        False, description="Let API clients give input images as http(s) URLs for the server to download. "
                           "Loopback, link-local and private addresses are refused even then.",
    )
    CLIP_stop_at_last_layers: int = Field(
        1, ge=1, le=12,
        description="Clip skip: stop the text encoder this many layers before the end (1 = use all).",
    )
    control_net_unit_count: int = Field(
        3, ge=1, le=8, description="ControlNet units shown on txt2img and img2img (after a restart of the page)."
    )
    control_net_model_cache_size: int = Field(
        2, ge=1, le=10, description="How many ControlNet models to keep loaded in memory at once."
    )
    control_net_no_detectmap: bool = Field(
        False, description="Do not show the ControlNet maps (detected maps) next to the results."
    )
    control_net_detectmap_autosaving: bool = Field(
        False, description="Save the ControlNet maps a job used, in the detected maps folder."
    )
    control_net_detectedmap_dir: str = Field(
        "outputs/detected_maps", description="Folder where ControlNet maps are saved when saving them is on."
    )
    ESRGAN_tile: int = Field(
        192, ge=0, le=2048, description="Upscaler tile size in pixels (ESRGAN, SwinIR, ...); 0 = the whole picture "
                                       "at once. Smaller tiles use less memory.",
    )
    ESRGAN_tile_overlap: int = Field(
        8, ge=0, le=256, description="Pixels by which upscaler tiles overlap; blended so no seam shows.",
    )
    face_restoration: bool = Field(
        False, description="Restore faces in API requests that do not say (restore_faces: null), as A1111.",
    )
    tiling: bool = Field(
        False, description="Make tileable pictures in API requests that do not say (tiling: null), as A1111.",
    )
    face_restoration_model: Literal["CodeFormer", "GFPGAN"] = Field(
        "CodeFormer", description="Model used by \"Restore faces\" on txt2img and img2img.",
    )
    code_former_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="CodeFormer weight for \"Restore faces\": 0 = strongest effect, "
                                         "1 = closest to the original.",
    )
    interrogate_keep_models_in_memory: bool = Field(
        False, description="Keep the interrogate (BLIP) model loaded between captions instead of loading it each time.",
    )
    interrogate_clip_num_beams: int = Field(1, ge=1, le=16, description="BLIP: number of beams when captioning.")
    interrogate_clip_min_length: int = Field(24, ge=1, le=128, description="BLIP: shortest caption, in tokens.")
    interrogate_clip_max_length: int = Field(48, ge=1, le=256, description="BLIP: longest caption, in tokens.")
    extensions_index_url: str = Field(
        "", description="Extension index URL: the index of available extensions (an http(s) URL or a file) that "
                        "the Extensions tab loads when you press Load index; empty means the studio's own.",
    )


# Options that name folders on the server. The API must not let clients set
# these, or a remote user could make the app write anywhere on disk.
PATH_OPTIONS: frozenset[str] = frozenset(
    {"outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples",
     "outdir_txt2img_grids", "control_net_detectedmap_dir"}
)

# Options a remote client must not turn on for itself: they decide what the server reaches out to.
SERVER_ONLY_OPTIONS: frozenset[str] = frozenset({"api_enable_requests"})

# A1111 options the studio has no setting for but keeps for clients (see OptionsStore.update_extra). These
# name files or folders on the server (clean_temp_dir_at_start deletes one), so the API refuses them as
# PATH_OPTIONS; A1111 itself restricts most of them (restricted_opts, --hide-ui-dir-config).
A1111_PATH_OPTIONS: frozenset[str] = frozenset(
    {"outdir_samples", "outdir_grids", "outdir_img2img_grids", "outdir_save", "outdir_init_images", "temp_dir",
     "clean_temp_dir_at_start", "font", "profiling_filename", "restore_config_state_file"}
)

# A1111 marks these restrict_api: its API refuses to change them, and so does the studio's.
A1111_SERVER_ONLY_OPTIONS: frozenset[str] = frozenset({"api_forbid_local_requests", "api_useragent"})


class ExtraOptionError(ValueError):
    """Extra (A1111) options that cannot be stored; `problems` holds (key, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in problems))

Listener = Callable[[Options, Options], None]


class OptionsStore:
    """Holds the current Options, saves them to config.json, tells listeners."""

    def __init__(self, path: Path, extra_defaults: Mapping[str, Any] | None = None) -> None:
        """`extra_defaults`: other tools' options (A1111's by default) that clients may read and set, which
        the studio keeps but does not act on, with their defaults."""
        self.path = Path(path)
        self._options = Options()
        # Keys we do not know (an A1111 config.json has hundreds): kept and
        # written back so other tools' settings survive our saves.
        self._unknown: dict[str, Any] = {}
        defaults = a1111_defaults() if extra_defaults is None else dict(extra_defaults)
        self._key_order = list(defaults)  # all_options() answers in this order, as A1111 lists its keys
        self._extra_defaults = {k: v for k, v in defaults.items() if k not in Options.model_fields}
        self._listeners: list[Listener] = []
        # Reentrant so a listener may read (or even update) the store.
        self._lock = threading.RLock()

    @property
    def options(self) -> Options:
        """A copy of the current options; change them through update()."""
        with self._lock:
            return self._options.model_copy()

    @property
    def unknown_keys(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._unknown)

    @property
    def extra_defaults(self) -> dict[str, Any]:
        """The extra keys (those the studio has no setting for) with their defaults."""
        return json.loads(json.dumps(self._extra_defaults))

    def add_extra_defaults(self, defaults: Mapping[str, Any]) -> None:
        """More extra keys with their defaults (extensions' settings): listed, read and set like A1111's."""
        with self._lock:
            for key, default in defaults.items():
                if key in Options.model_fields or key in self._extra_defaults:
                    raise ValueError(f"option {key!r} exists already")
                self._extra_defaults[key] = json.loads(json.dumps(default))
                self._key_order.append(key)

    @property
    def extra_options(self) -> dict[str, Any]:
        """Every extra key's current value: what config.json or update_extra() stored, else its default.

        A stored value of the wrong type (a hand-edited file) reads as the default.
        """
        with self._lock:
            current = {}
            for key, default in self._extra_defaults.items():
                stored = self._unknown.get(key, default)
                ok = key not in HTML_OPTIONS and type_problem(stored, default) is None
                current[key] = stored if ok else default
            return json.loads(json.dumps(current))  # a deep copy: callers may change lists in it

    def all_options(self) -> dict[str, Any]:
        """What GET /sdapi/v1/options answers: every extra key in its tool's order (the studio's value where
        the studio has that setting, else extra_options), then the studio's own other keys."""
        with self._lock:
            studio = self._options.model_dump()
            extra = self.extra_options
        merged = {key: studio[key] if key in studio else extra[key] for key in self._key_order}
        merged.update((key, value) for key, value in studio.items() if key not in merged)
        return merged

    def check_extra(self, changes: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(key, reason) for each change update_extra() would refuse among the keys that are not the studio's:
        unknown keys, and values whose JSON type differs from the default's (ints and floats mix)."""
        problems = []
        for key, value in changes.items():
            if key in Options.model_fields:
                continue
            if key not in self._extra_defaults:
                problems.append((key, "unknown option"))
            elif (reason := type_problem(value, self._extra_defaults[key])) is not None:
                problems.append((key, f"{reason}, got {json.dumps(value)}"))
        return problems

    def update_extra(self, changes: Mapping[str, Any]) -> Options:
        """Store extra options, and apply any studio options among `changes` as update() does, in one save.

        Everything is checked first: raises ExtraOptionError (extra keys) or pydantic.ValidationError (studio
        keys) and changes nothing if any change is refused. Explanation entries (HTML_OPTIONS) are not
        settings and are ignored, as A1111 ignores them.
        """
        with self._lock:
            problems = self.check_extra(changes)
            if problems:
                raise ExtraOptionError(problems)
            studio = {k: v for k, v in changes.items() if k in Options.model_fields}
            old = self._options
            new = Options.model_validate({**old.model_dump(), **studio})
            stored = {k: v for k, v in changes.items()
                      if k not in Options.model_fields and k not in HTML_OPTIONS}
            unknown = {**self._unknown, **stored}
            if new == old and unknown == self._unknown:
                return new.model_copy()
            self._write_file(new, unknown)
            self._options, self._unknown = new, unknown
            if new != old:
                self._notify(old, new)
            return new.model_copy()

    def load(self) -> Options:
        """Read config.json if it exists; bad content is logged, never fatal."""
        with self._lock:
            data = self._read_file()
            known = {k: v for k, v in data.items() if k in Options.model_fields}
            unknown = {k: v for k, v in data.items() if k not in Options.model_fields}
            if unknown:
                log.info("%s: keeping %d unknown option(s) aside: %s",
                         self.path, len(unknown), ", ".join(sorted(unknown)))
            new = Options()
            # One bad value must not reset the others, so validate one by one.
            for key, value in known.items():
                try:
                    new = Options.model_validate({**new.model_dump(), key: value})
                except ValidationError as err:
                    log.warning("%s: ignoring invalid value for %s: %s", self.path, key,
                                err.errors()[0]["msg"])
            old, self._options, self._unknown = self._options, new, unknown
            if new != old:
                self._notify(old, new)
            return new.model_copy()

    def update(self, **changes: Any) -> Options:
        """Validate all changes, save them, then tell listeners.

        Raises pydantic.ValidationError (naming the fields) and changes nothing
        if any value is bad or any name is unknown.
        """
        with self._lock:
            old = self._options
            new = Options.model_validate({**old.model_dump(), **changes})
            if new == old:
                return new.model_copy()
            self._write_file(new, self._unknown)
            self._options = new
            self._notify(old, new)
            return new.model_copy()

    def subscribe(self, callback: Listener) -> None:
        """Call callback(old, new) after each change, so it applies without a restart."""
        with self._lock:
            self._listeners.append(callback)

    def _read_file(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as err:
            log.warning("could not read settings file %s, using defaults: %s", self.path, err)
            return {}
        try:
            data = json.loads(text)
        except ValueError as err:
            log.warning("settings file %s is not valid JSON, using defaults: %s", self.path, err)
            return {}
        if not isinstance(data, dict):
            log.warning("settings file %s does not hold a JSON object, using defaults", self.path)
            return {}
        return data

    def _write_file(self, options: Options, unknown: dict[str, Any]) -> None:
        # Temp file + fsync + os.replace: a crash mid-write leaves the old
        # config.json whole instead of a truncated one.
        data = {**unknown, **options.model_dump()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                        dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=4, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _notify(self, old: Options, new: Options) -> None:
        for callback in list(self._listeners):
            try:
                callback(old.model_copy(), new.model_copy())
            except Exception:  # one broken listener must not block the others
                log.exception("options listener %r failed", callback)
