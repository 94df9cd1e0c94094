"""Everything a running studio holds, built once at start-up and passed explicitly.

The UI and the API both receive this object; nothing here lives in a module
global. `build_app_context` is the one place that wires the pieces together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.control.library import ControlLibrary, ControlPaths
from backend.devices import DeviceSettings
from backend.extensions import Extensions, load_extensions
from backend.extensions.studio import current_values, hand_over, reserved_names, sampler_catalog
from backend.extras.in_generation import GenerationExtras
from backend.extras.library import ExtrasLibrary, ExtrasPaths
from backend.extras.service import ExtrasService
from backend.generation.service import GenerationService
from backend.interrogate import InterrogateService
from backend.models.hashing import HashCache
from backend.models.manager import ModelManager
from backend.networks.library import NetworkLibrary
from backend.previews.library import PreviewDecoders
from backend.prompts.styles import StyleStore
from backend.server_control import ServerControl
from backend.settings import Options, OptionsStore

STARTER_STYLES = Path(__file__).parent / "prompts" / "starter_styles.csv"
DEMO_CHECKPOINT = Path(__file__).parent / "demo_model" / "studio-demo.safetensors"
BUILTIN_EXTENSIONS = Path(__file__).resolve().parent.parent / "extensions"  # shipped with the studio


@dataclass
class AppPaths:
    root: Path  # the studio's folder: config.json, styles.csv and relative output folders live here
    checkpoint_dirs: list[Path] = field(default_factory=list)
    lora_dirs: list[Path] = field(default_factory=list)  # --lora-dir; models/Lora when empty
    embedding_dirs: list[Path] = field(default_factory=list)  # --embeddings-dir; models/embeddings when empty
    vae_dirs: list[Path] = field(default_factory=list)  # --vae-dir; models/VAE when empty
    controlnet_dirs: list[Path] = field(default_factory=list)  # --controlnet-dir: searched besides models/ControlNet
    annotator_dir: Path | None = None  # --controlnet-annotator-models-path; models/annotators when None
    upscaler_dirs: dict[str, list[Path]] = field(default_factory=dict)  # --esrgan-models-path etc.
    gfpgan_dir: Path | None = None  # --gfpgan-models-path; models/GFPGAN when None
    codeformer_dir: Path | None = None  # --codeformer-models-path; models/Codeformer when None
    builtin_checkpoints: list[Path] = field(default_factory=lambda: [DEMO_CHECKPOINT])
    extension_dirs: list[Path] | None = None  # None: the shipped extensions/ and <root>/extensions

    def extension_folders(self) -> list[Path]:
        if self.extension_dirs is not None:
            return list(self.extension_dirs)
        return list(dict.fromkeys([BUILTIN_EXTENSIONS, (self.root / "extensions").resolve()]))

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    @property
    def styles_file(self) -> Path:
        return self.root / "styles.csv"

    @property
    def cache_file(self) -> Path:
        return self.root / "cache.json"

    def control_paths(self) -> ControlPaths:
        models = self.root / "models"
        return ControlPaths(controlnet_dirs=[models / "ControlNet", *self.controlnet_dirs],
                            annotator_dir=self.annotator_dir or models / "annotators",
                            ipadapter_dirs=[models / "ipadapter"], clip_vision_dirs=[models / "clip_vision"])

    def extras_paths(self) -> ExtrasPaths:
        return ExtrasPaths(models=self.root / "models", upscaler_dirs=self.upscaler_dirs, gfpgan_dir=self.gfpgan_dir,
                           codeformer_dir=self.codeformer_dir)


@dataclass
class AppContext:
    root: Path
    options: OptionsStore
    styles: StyleStore
    manager: ModelManager
    service: GenerationService
    device: DeviceSettings
    networks: NetworkLibrary
    control: ControlLibrary
    extras: ExtrasLibrary
    extras_service: ExtrasService
    command_flags: dict[str, Any] = field(default_factory=dict)  # as launched; /cmd-flags shows them, secrets hidden
    extensions: Extensions | None = None  # what was found in the extension folders at start, and why not loaded
    interrogate: InterrogateService | None = None  # captions from models/BLIP (img2img's Interrogate, the API)
    server_control: ServerControl | None = None  # set by ui/server.py once its server exists (/server-stop, ...)


def build_app_context(paths: AppPaths, device: DeviceSettings, command_flags: dict[str, Any] | None = None) -> AppContext:
    options = OptionsStore(paths.config_file)
    options.load()
    styles = StyleStore(paths.styles_file, STARTER_STYLES)
    dirs = paths.checkpoint_dirs or [paths.root / "models" / "Stable-diffusion"]
    manager = ModelManager(dirs, device, cache_size=options.options.sd_checkpoints_limit,
                           hash_cache=HashCache(paths.cache_file), builtin=paths.builtin_checkpoints,
                           keep_in_cpu=options.options.sd_checkpoints_keep_in_cpu)
    options.subscribe(lambda old, new: _apply_options(manager, old, new))
    networks = NetworkLibrary(paths.lora_dirs or [paths.root / "models" / "Lora"],
                              paths.embedding_dirs or [paths.root / "models" / "embeddings"],
                              paths.vae_dirs or [paths.root / "models" / "VAE"])
    control = ControlLibrary(paths.control_paths(), device.device, device.dtype,
                             cache_size=options.options.control_net_model_cache_size)
    extras = ExtrasLibrary.build(paths.extras_paths(), device.device, device.dtype)
    disabled, disable_all = _disabled_extensions(options)
    extensions = load_extensions(paths.extension_folders(), disabled=disabled, disable_all=disable_all,
                                 reserved=reserved_names(options, control), options=current_values(options))
    hand_over(extensions.hooks, options, extras, control)
    previews = PreviewDecoders([paths.root / "models" / "VAE-approx"], device.device, device.vae,
                               channels_last=device.vae_channels_last)
    service = GenerationService(manager, options, styles, device, root=paths.root, networks=networks, control=control,
                                extras=GenerationExtras(extras, options), hooks=extensions.hooks,
                                samplers=sampler_catalog(extensions.hooks), previews=previews)
    options.subscribe(lambda old, new: _apply_control_options(control, old, new))
    return AppContext(root=paths.root, options=options, styles=styles, manager=manager, service=service, device=device,
                      networks=networks, control=control, extras=extras, extras_service=ExtrasService(extras, service),
                      command_flags=dict(command_flags or {}), extensions=extensions,
                      interrogate=InterrogateService(paths.root / "models" / "BLIP", device.device, device.dtype,
                                                     service.queue, options))


def _disabled_extensions(options: OptionsStore) -> tuple[set[str], bool]:
    """A1111's disabled_extensions list, and whether disable_all_extensions (not "none") turns every one off."""
    kept = options.extra_options
    return set(kept.get("disabled_extensions") or []), kept.get("disable_all_extensions", "none") != "none"


def _apply_options(manager: ModelManager, old: Options, new: Options) -> None:
    """Settings that take effect at once, without a restart."""
    if old.sd_checkpoints_limit != new.sd_checkpoints_limit:
        manager.cache_size = new.sd_checkpoints_limit
    if old.sd_checkpoints_keep_in_cpu != new.sd_checkpoints_keep_in_cpu:
        manager.keep_in_cpu = new.sd_checkpoints_keep_in_cpu  # takes effect at the next checkpoint switch


def _apply_control_options(control: ControlLibrary, old: Options, new: Options) -> None:
    if old.control_net_model_cache_size != new.control_net_model_cache_size:
        control.controlnets.cache_size = new.control_net_model_cache_size
