"""txt2img on a tiny seeded SD1-shaped pipeline: seeds, batches, hires fix, interrupt/skip, infotext."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from backend.devices import DeviceSettings
from backend.generation.job import JobControl
from backend.generation.request import HiresFix, Txt2ImgRequest
from backend.generation.sampling import derive_pipeline
from backend.generation.txt2img import run_txt2img
from backend.images.infotext import parse_infotext
from backend.models.errors import UnknownCheckpointError
from backend.models.types import CheckpointInfo, LoadedCheckpoint, ModelFamily, ModelVariant

CPU = DeviceSettings(device=torch.device("cpu"), dtype=torch.float32)

# --------------------------------------------------------------------------- tiny pipeline


def _byte_symbols() -> list[str]:
    """CLIP's byte-to-unicode table: printable bytes stand for themselves, the rest map to 256, 257, ..."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


def write_tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level BPE vocabulary of ~520 entries: bytes, bytes + </w>, a few merges, specials."""
    symbols = _byte_symbols()
    merges = [("a", "t</w>"), ("c", "at</w>"), ("d", "o"), ("do", "g</w>"), ("t", "h"), ("th", "e</w>"),
              ("r", "e"), ("re", "d</w>")]
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def build_tiny_sd1(folder: Path) -> LoadedCheckpoint:
    tokenizer = write_tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=1000,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        sample_size=8).eval()
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=64).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    info = CheckpointInfo(path=folder, name="tiny.safetensors", sha256="0" * 64)
    return LoadedCheckpoint(info=info, variant=ModelVariant(ModelFamily.SD1), pipe=pipe)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> LoadedCheckpoint:
    return build_tiny_sd1(tmp_path_factory.mktemp("tiny"))


def generate(loaded, job: JobControl | None = None, prompt="a red cat", negative="", **fields):
    fields = {"width": 64, "height": 64, "steps": 3, "seed": 1234, "sampler_name": "Euler", **fields}
    request = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, **fields)
    return run_txt2img(loaded, request, job or JobControl(), device_settings=CPU, prompt=prompt,
                       negative_prompt=negative)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@dataclass
class StopAt(JobControl):
    """A JobControl that presses interrupt or skip when batch `at_batch` reaches step `at_step`."""

    at_batch: int = 0
    at_step: int = 2
    action: str = "interrupt"
    seen: list = field(default_factory=list)  # (batch, step) as reported by the runner

    def advance(self, step: int) -> None:
        super().advance(step)
        self.seen.append((self.job_no, step))
        if (self.job_no, step) == (self.at_batch, self.at_step):
            self.interrupt() if self.action == "interrupt" else self.skip()


# --------------------------------------------------------------------------- seeds and batches


def test_same_seed_same_pixels_different_seed_differs(tiny):
    a = generate(tiny, seed=7).images[0]
    b = generate(tiny, seed=7).images[0]
    c = generate(tiny, seed=8).images[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 2


def test_ancestral_sampler_is_reproducible(tiny):
    a = generate(tiny, seed=7, sampler_name="Euler a").images[0]
    b = generate(tiny, seed=7, sampler_name="Euler a").images[0]
    assert np.array_equal(pixels(a), pixels(b))


def test_batch_seeds_count_up_over_batches(tiny):
    out = generate(tiny, seed=100, batch_size=2, n_iter=2)
    assert out.seeds == [100, 101, 102, 103]
    assert len(out.images) == len(out.infotexts) == len(out.params) == 4
    assert [p["Seed"] for p in out.params] == [100, 101, 102, 103]
    assert not out.interrupted


def test_random_seed_is_chosen_once_per_request(tiny):
    out = generate(tiny, seed=-1, batch_size=2, n_iter=2, steps=1)
    first = out.seeds[0]
    assert 0 <= first < 2**32
    assert out.seeds == [first, first + 1, first + 2, first + 3]


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M SDE"])
def test_image_k_of_a_batch_equals_that_seed_alone(tiny, sampler):
    batch = generate(tiny, seed=50, batch_size=2, n_iter=2, sampler_name=sampler)
    for k, seed in enumerate(batch.seeds):
        alone = generate(tiny, seed=seed, sampler_name=sampler).images[0]
        diff = np.abs(pixels(batch.images[k]) - pixels(alone))
        # Batched and single convolutions may round differently in the last bit.
        assert diff.max() <= 2, (k, diff.max())
    assert np.abs(pixels(batch.images[0]) - pixels(batch.images[1])).mean() > 2


def test_size_is_passed_through(tiny):
    out = generate(tiny, width=96, height=64)
    assert out.images[0].size == (96, 64)


def test_the_loaded_pipeline_is_left_alone(tiny):
    scheduler, config = tiny.pipe.scheduler, dict(tiny.pipe.scheduler.config)
    generate(tiny, sampler_name="DPM++ 2M", scheduler="Karras", hires=HiresFix(enabled=True, upscale_by=1.5))
    assert tiny.pipe.scheduler is scheduler and dict(tiny.pipe.scheduler.config) == config
    assert not getattr(tiny.pipe, "_interrupt", False)


def test_derived_pipelines_share_weights_and_keep_dtypes(tiny, tmp_path):
    loaded = build_tiny_sd1(tmp_path)
    loaded.pipe.vae.to(torch.float64)  # mixed precision must not be flattened
    sched = EulerDiscreteScheduler.from_config(loaded.pipe.scheduler.config)
    derived = derive_pipeline(loaded.pipe, StableDiffusionImg2ImgPipeline, sched)
    assert derived.unet is loaded.pipe.unet and derived.vae is loaded.pipe.vae
    assert derived.scheduler is sched and loaded.pipe.scheduler is not sched
    assert loaded.pipe.vae.dtype == torch.float64 and loaded.pipe.unet.dtype == torch.float32


def test_concurrent_requests_do_not_share_sampler_state(tiny):
    jobs = [dict(seed=1, sampler_name="DPM++ 2M", scheduler="Karras"), dict(seed=2, sampler_name="Euler a"),
            dict(seed=3, sampler_name="UniPC"), dict(seed=4, sampler_name="Heun")]
    alone = [generate(tiny, steps=4, **fields).images[0] for fields in jobs]
    together: list = [None] * len(jobs)

    def work(i):
        together[i] = generate(tiny, steps=4, **jobs[i]).images[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        assert np.abs(pixels(a) - pixels(b)).max() <= 2


# --------------------------------------------------------------------------- hires fix


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest)", "Latent (bicubic)", "Lanczos", "Nearest"])
def test_hires_fix_reaches_the_target_size(tiny, upscaler):
    job = JobControl()
    fix = HiresFix(enabled=True, upscaler=upscaler, upscale_by=2.0, denoising_strength=0.5, steps=4)
    out = generate(tiny, job, steps=3, hires=fix, batch_size=2)
    assert [im.size for im in out.images] == [(128, 128), (128, 128)]
    assert job.total_job_steps == 3 + int(4 * 0.5)
    assert job.passes_done_steps == job.total_job_steps
    plain = generate(tiny, steps=3).images[0].resize((128, 128))
    assert np.abs(pixels(out.images[0]) - pixels(plain)).mean() > 1


def test_hires_resize_and_reproducibility(tiny):
    fix = HiresFix(enabled=True, upscaler="Latent", resize_x=128, resize_y=96, denoising_strength=0.6)
    a = generate(tiny, hires=fix, seed=9)
    b = generate(tiny, hires=fix, seed=9)
    assert a.images[0].size == (128, 96)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert a.params[0]["Hires resize"] == "128x96" and "Hires upscale" not in a.params[0]


def test_hires_with_zero_strength_returns_the_upscaled_first_pass(tiny):
    job = JobControl()
    fix = HiresFix(enabled=True, upscaler="Lanczos", upscale_by=2.0, denoising_strength=0.0)
    out = generate(tiny, job, hires=fix, seed=5)
    plain = generate(tiny, seed=5).images[0].resize((128, 128), Image.Resampling.LANCZOS)
    assert out.images[0].size == (128, 128)
    assert np.abs(pixels(out.images[0]) - pixels(plain)).max() <= 2
    assert job.total_job_steps == 3


# --------------------------------------------------------------------------- interrupt, skip, progress


def test_interrupt_stops_early_and_keeps_the_partial_batch(tiny):
    job = StopAt(at_batch=0, at_step=2, action="interrupt")
    out = generate(tiny, job, steps=4, n_iter=3, seed=20)
    assert out.interrupted
    assert out.seeds == [20] and len(out.images) == 1
    assert job.seen == [(0, 1), (0, 2)]  # no step after the interrupt, no further batch
    full = generate(tiny, steps=4, seed=20).images[0]
    assert np.abs(pixels(out.images[0]) - pixels(full)).mean() > 1  # partly denoised


def test_interrupt_in_a_later_batch_keeps_the_finished_ones(tiny):
    job = StopAt(at_batch=1, at_step=1, action="interrupt")
    out = generate(tiny, job, steps=3, n_iter=3, batch_size=2, seed=30)
    assert out.interrupted and out.seeds == [30, 31, 32, 33]
    reference = generate(tiny, steps=3, seed=31).images[0]
    assert np.abs(pixels(out.images[1]) - pixels(reference)).max() <= 2


def test_interrupt_during_hires_first_pass_skips_the_second(tiny):
    job = StopAt(at_batch=0, at_step=1, action="interrupt")
    out = generate(tiny, job, steps=3, hires=HiresFix(enabled=True, upscale_by=2.0))
    assert out.interrupted and out.images[0].size == (64, 64)


def test_skip_ends_one_batch_and_the_next_runs(tiny):
    job = StopAt(at_batch=0, at_step=2, action="skip")
    out = generate(tiny, job, steps=4, n_iter=2, seed=40)
    assert not out.interrupted
    assert out.seeds == [40, 41]
    assert (0, 3) not in job.seen and (1, 4) in job.seen
    full_40 = generate(tiny, steps=4, seed=40).images[0]
    full_41 = generate(tiny, steps=4, seed=41).images[0]
    assert np.abs(pixels(out.images[0]) - pixels(full_40)).mean() > 1
    assert np.abs(pixels(out.images[1]) - pixels(full_41)).max() <= 2


def test_progress_and_live_preview(tiny):
    job = JobControl(preview_every_n_steps=2)
    generate(tiny, job, steps=4, n_iter=2)
    snap = job.snapshot()
    assert job.total_job_steps == 8 and job.passes_done_steps == 8
    assert snap.preview is not None and snap.preview.size == (8, 8)
    assert snap.preview_id == 4  # steps 2 and 4 of each batch


def test_second_order_sampler_reports_whole_steps(tiny):
    job = StopAt(at_step=-1)
    generate(tiny, job, steps=3, sampler_name="Heun")
    steps = [s for _, s in job.seen]
    assert steps == sorted(steps) and steps[-1] == 3 and max(steps) == 3


# --------------------------------------------------------------------------- clip skip and infotext


def test_clip_skip_two_differs_from_one(tiny):
    one = generate(tiny, clip_skip=1, seed=3).images[0]
    two = generate(tiny, clip_skip=2, seed=3).images[0]
    again = generate(tiny, clip_skip=2, seed=3).images[0]
    assert np.abs(pixels(one) - pixels(two)).mean() > 1
    assert np.array_equal(pixels(two), pixels(again))


def test_clip_skip_one_matches_the_pipeline_own_encoding(tiny):
    from backend.prompts.conditioning import PromptEncoder

    texts = ["a red cat", ""]
    ours = torch.cat([PromptEncoder(tiny.pipe, clip_skip=1).encode(t).embeds for t in texts])
    # One text per call on both sides: a batch of two may take another kernel path and round differently.
    theirs = torch.cat([tiny.pipe.encode_prompt(t, torch.device("cpu"), 1, False)[0] for t in texts])
    assert torch.equal(ours, theirs)


def test_infotext_has_a1111_fields_in_order(tiny):
    out = generate(tiny, prompt="a red cat", negative="blurry, dark", steps=3, cfg_scale=6.5, seed=77,
                   sampler_name="DPM++ 2M", scheduler="Karras", clip_skip=2,
                   hires=HiresFix(enabled=True, upscaler="Latent", upscale_by=1.5, steps=4,
                                  denoising_strength=0.55))
    assert list(out.params[0]) == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size",
                                   "Model hash", "Model", "Denoising strength", "Clip skip", "Hires upscale",
                                   "Hires steps", "Hires upscaler", "Version"]
    parsed = parse_infotext(out.infotexts[0])
    assert parsed["Prompt"] == "a red cat" and parsed["Negative prompt"] == "blurry, dark"
    assert {k: parsed[k] for k in ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size",
                                   "Model hash", "Model", "Denoising strength", "Clip skip", "Hires upscale",
                                   "Hires steps", "Hires upscaler")} == {
        "Steps": "3", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "6.5", "Seed": "77",
        "Size": "64x64", "Model hash": "0000000000", "Model": "tiny", "Denoising strength": "0.55",
        "Clip skip": "2", "Hires upscale": "1.5", "Hires steps": "4", "Hires upscaler": "Latent"}
    assert parsed["Version"]


def test_infotext_leaves_out_defaults(tiny):
    params = generate(tiny, clip_skip=1).params[0]
    assert "Clip skip" not in params and "Denoising strength" not in params
    assert not any(k.startswith("Hires") for k in params)
    assert params["Schedule type"] == "Automatic"


def test_models_that_cannot_do_txt2img_are_refused(tmp_path):
    loaded = build_tiny_sd1(tmp_path)
    loaded.pipe = derive_pipeline(loaded.pipe, StableDiffusionImg2ImgPipeline, loaded.pipe.scheduler)
    with pytest.raises(ValueError, match="cannot do text-to-image"):
        generate(loaded)


# --------------------------------------------------------------------------- the service


class FakeManager:
    """The slice of ModelManager the service uses, serving the tiny pipeline."""

    def __init__(self, loaded: LoadedCheckpoint):
        self.loaded = loaded
        self.device_lock = threading.RLock()
        self.requested: list[str] = []
        self.compiler = None  # no --compile

    def load(self, name: str) -> LoadedCheckpoint:
        assert self.device_lock._is_owned()  # loading happens under the device lock
        self.requested.append(name)
        if name not in (self.loaded.info.name, self.loaded.info.model_name):
            raise UnknownCheckpointError(f"unknown checkpoint {name!r}")
        return self.loaded

    def default_checkpoint(self):
        return self.loaded.info


@pytest.fixture
def service(tiny, tmp_path):
    from backend.generation.service import GenerationService
    from backend.prompts.styles import StyleStore
    from backend.settings import OptionsStore

    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nshiny,{prompt} shiny,dull\n")
    options = OptionsStore(tmp_path / "config.json")
    options.update(show_progress_every_n_steps=1)
    styles = StyleStore(tmp_path / "styles.csv", tmp_path / "no-starter.csv")
    return GenerationService(FakeManager(tiny), options, styles, CPU, root=tmp_path)


def test_service_generates_saves_and_reports(service, tmp_path):
    job = JobControl()
    request = Txt2ImgRequest(prompt="a cat", negative_prompt="ugly", styles=["shiny"], width=64, height=64,
                             steps=2, seed=11, batch_size=2, sampler_name="Euler")
    result = service.txt2img(request, job)
    assert result.seeds == [11, 12] and len(result.images) == 2 and not result.interrupted
    assert job.finished and job.preview is not None  # live previews follow the options
    assert service.manager.requested == ["tiny.safetensors"]  # the default checkpoint
    assert len(result.paths) == 2
    for path, infotext in zip(result.paths, result.infotexts):
        assert path.parent.parent == tmp_path / "outputs" / "txt2img-images"  # date sub-folder
        assert path.name.endswith(".png")
        assert Image.open(path).info["parameters"] == infotext
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Prompt"] == "a cat shiny" and parsed["Negative prompt"] == "ugly, dull"
    info = result.info
    assert info["prompt"] == "a cat" and info["all_prompts"] == ["a cat shiny"] * 2
    assert info["all_negative_prompts"] == ["ugly, dull"] * 2
    assert (info["seed"], info["all_seeds"]) == (11, [11, 12])
    # As A1111: an unset variation seed (-1) is drawn at random even at strength 0; image k has subseed + k.
    assert info["all_subseeds"] == [info["subseed"], info["subseed"] + 1] and info["subseed"] >= 0
    assert (info["width"], info["height"], info["steps"], info["batch_size"]) == (64, 64, 2, 2)
    assert info["sd_model_name"] == "tiny" and info["sd_model_hash"] == "0000000000"
    assert info["infotexts"] == result.infotexts and info["styles"] == ["shiny"]
    assert info["index_of_first_image"] == 0 and info["restore_faces"] is False
    json.dumps(info)  # the API sends it as JSON


def test_service_can_skip_saving_and_names_checkpoints(service, tmp_path):
    request = Txt2ImgRequest(prompt="x", width=64, height=64, steps=1, save_images=False, checkpoint="tiny")
    result = service.txt2img(request)
    assert result.paths == [] and not (tmp_path / "outputs").exists()
    assert service.manager.requested == ["tiny"]
    with pytest.raises(UnknownCheckpointError):
        service.txt2img(Txt2ImgRequest(prompt="x", width=64, height=64, steps=1, checkpoint="missing"))


def test_running_out_of_memory_is_said_plainly_and_the_next_job_runs(service):
    from backend.generation.service import GenerationOutOfMemory

    def runner_that_asks_too_much(loaded, request, job, **kwargs):
        return torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: the CPU allocator refuses it, for real

    request = Txt2ImgRequest(prompt="x", width=64, height=64, steps=1, seed=5, sampler_name="Euler",
                             save_images=False)
    with pytest.raises(GenerationOutOfMemory, match="out of memory on cpu at 64x64, batch size 1: try a smaller"):
        service._generate(request, None, runner_that_asks_too_much, "outdir_txt2img_samples")

    def runner_with_another_fault(loaded, request, job, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="mat1 and mat2") as other:  # not every RuntimeError is memory
        service._generate(request, None, runner_with_another_fault, "outdir_txt2img_samples")
    assert not isinstance(other.value, GenerationOutOfMemory)
    after = service.txt2img(request)
    assert np.array_equal(pixels(after.images[0]), pixels(generate(service.manager.loaded, prompt="x", seed=5,
                                                                     steps=1).images[0]))


def test_service_hires_info(service):
    request = Txt2ImgRequest(prompt="x", width=64, height=64, steps=2, save_images=False,
                             hires=HiresFix(enabled=True, upscale_by=1.5, denoising_strength=0.5))
    info = service.txt2img(request).info
    assert info["denoising_strength"] == 0.5
    assert info["extra_generation_params"]["Hires upscaler"] == "Latent"
    assert "Steps" not in info["extra_generation_params"]


# --------------------------------------------------------------------------- other families, real loader


@pytest.fixture(scope="module")
def real_manager(checkpoint_dir):
    from backend.models.manager import ModelManager

    return ModelManager([checkpoint_dir], CPU, cache_size=3)


@pytest.mark.parametrize("name", ["sdxl.safetensors", "sd2-v.safetensors"])
@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_other_families_with_hires_and_clip_skip(real_manager, name, upscaler):
    loaded = real_manager.load(name)
    fix = HiresFix(enabled=True, upscaler=upscaler, upscale_by=1.5, denoising_strength=0.5)
    a = generate(loaded, sampler_name="DPM++ 2M SDE", steps=2, clip_skip=2, hires=fix, batch_size=2, seed=3)
    b = generate(loaded, sampler_name="DPM++ 2M SDE", steps=2, clip_skip=2, hires=fix, seed=4)
    assert [im.size for im in a.images] == [(96, 96), (96, 96)]
    assert np.abs(pixels(a.images[1]) - pixels(b.images[0])).max() <= 2
    assert pixels(a.images[0]).std() > 1


def test_inpainting_checkpoint_generates_from_a_fully_masked_image(real_manager):
    """A 9-channel UNet gets A1111's txt2img conditioning: the whole picture masked."""
    loaded = real_manager.load("sd1-inpainting.safetensors")
    assert loaded.pipe.unet.config.in_channels == 9
    a = generate(loaded, steps=3, seed=11)
    again = generate(loaded, steps=3, seed=11)
    other = generate(loaded, steps=3, seed=12)
    assert np.array_equal(pixels(a.images[0]), pixels(again.images[0]))
    assert np.abs(pixels(a.images[0]) - pixels(other.images[0])).max() > 10
    fix = HiresFix(enabled=True, upscaler="Latent", upscale_by=1.5, denoising_strength=0.5)
    hires = generate(loaded, steps=2, seed=11, hires=fix)
    assert hires.images[0].size == (96, 96)
