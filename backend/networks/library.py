"""The small models a user collects (LoRAs, embeddings), and putting a request's LoRAs on a model.

One object, created with the app context and passed explicitly. `activate`
runs under the device lock with the checkpoint the job uses: it reads the
prompt's `<lora:...>` tags, applies exactly that set (taking off whatever the
previous job had), and says what it did, so the infotext and the user's
messages tell the truth: a LoRA that matched nothing is reported, not listed
as applied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.models.hashing import sha256_of
from backend.models.types import LoadedCheckpoint
from backend.networks.embeddings import EmbeddingStore
from backend.networks.lora import LoraError, LoraStore
from backend.networks.lora_patch import LoraPatcher
from backend.networks.vae import VaeError, VaeStore
from backend.prompts.extra_networks import TagError, extract_tags


@dataclass
class Activation:
    lora_hashes: dict[str, str] = field(default_factory=dict)  # name -> 12-hex hash, for the infotext
    warnings: list[str] = field(default_factory=list)
    vae: object = None  # an AutoencoderKL chosen instead of the checkpoint's own
    vae_file: Path | None = None

    def runner_kwargs(self, embeddings: EmbeddingStore) -> dict:
        vae_params = {"VAE hash": sha256_of(self.vae_file)[:10], "VAE": self.vae_file.name} if self.vae_file else {}
        network_params = {"Lora hashes": quote_hashes(self.lora_hashes)} if self.lora_hashes else {}
        return {"embeddings": embeddings, "network_params": network_params, "vae": self.vae,
                "vae_params": vae_params}


def quote_hashes(hashes: dict[str, str]) -> str:
    return ", ".join(f"{name}: {value}" for name, value in hashes.items())


class NetworkLibrary:
    def __init__(self, lora_dirs: list[Path], embedding_dirs: list[Path], vae_dirs: list[Path] = ()):
        self.loras = LoraStore(lora_dirs)
        self.embeddings = EmbeddingStore(embedding_dirs)
        self.vaes = VaeStore(list(vae_dirs))

    def refresh(self) -> None:
        self.loras.refresh()
        self.embeddings.refresh()
        self.vaes.refresh()

    def activate(self, loaded: LoadedCheckpoint, prompt: str, negative_prompt: str,
                 vae_choice: str = "Automatic") -> Activation:
        activation = self._apply_loras(loaded, prompt, negative_prompt)
        try:
            activation.vae, activation.vae_file = self.vaes.vae_for(vae_choice, loaded)
        except VaeError as exc:
            activation.warnings.append(f"{exc}; the checkpoint's own VAE was used")
        return activation

    def _apply_loras(self, loaded: LoadedCheckpoint, prompt: str, negative_prompt: str) -> Activation:
        patcher = loaded.extra.get("lora_patcher")
        if patcher is None:
            patcher = loaded.extra["lora_patcher"] = LoraPatcher(loaded.pipe)
        activation = Activation()
        tags = []
        for text in (prompt, negative_prompt):
            try:
                tags += extract_tags(text)[1]
            except TagError as exc:
                activation.warnings.append(f"ignored a tag: {exc}")
        wanted, key = [], []
        for tag in tags:
            if tag.kind == "hypernet":  # listed by /sdapi/v1/hypernetworks, but not applied (yet)
                activation.warnings.append(f"{tag.text}: hypernetworks are not supported; the picture was made "
                                           "without it")
                continue
            if tag.kind != "lora":
                activation.warnings.append(f"{tag.text}: no extra network of kind {tag.kind!r}; ignored")
                continue
            try:
                lora = self.loras.load(tag.name)
            except LoraError as exc:
                activation.warnings.append(str(exc))
                continue
            wanted.append((lora, tag))
            key.append((str(lora.file.path), lora.file.path.stat().st_mtime, tag.te_weight, tag.unet_weight))
        reports = patcher.apply([(lora.file.name, lora.updates, tag.te_weight, tag.unet_weight)
                                 for lora, tag in wanted], tuple(key))
        for (lora, tag), report in zip(wanted, reports):
            if not report.usable:
                activation.warnings.append(_why_unusable(lora, report, loaded))
                continue
            if report.unmatched or report.mismatched:
                activation.warnings.append(
                    f"LoRA {lora.file.name}: {report.applied} modules applied, {report.unmatched} matched nothing "
                    f"in this model and {report.mismatched} did not fit")
            activation.lora_hashes[tag.name] = lora.file.shorthash
        return activation


def _why_unusable(lora, report, loaded: LoadedCheckpoint) -> str:
    family = loaded.variant.family.value
    made_for = lora.file.base_model
    if report.mismatched:
        hint = f" (it says it was made for {made_for})" if made_for else ""
        return (f"LoRA {lora.file.name} does not fit {loaded.info.name}, a {family} model: {report.mismatched} of "
                f"its modules have other shapes{hint}. It was not applied.")
    return (f"LoRA {lora.file.name}: none of its {report.unmatched} modules matched anything in "
            f"{loaded.info.name} ({family}); it was not applied.")
