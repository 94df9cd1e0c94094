"""img2img, inpaint and outpaint on tiny real checkpoints: identities, kept pixels, sizes, modes, infotext."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from backend.devices import DeviceSettings
from backend.generation.img2img import EmptyMaskError, run_img2img
from backend.generation.img2img_batch import run_folder_batch
from backend.generation.job import JobControl
from backend.generation.request import Img2ImgRequest
from backend.images import masking
from backend.images.infotext import parse_infotext, read_infotext
from backend.images.loading import to_mask
from backend.images.resize import resize_image

CPU = DeviceSettings(device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def manager(checkpoint_dir):
    from backend.models.manager import ModelManager

    return ModelManager([checkpoint_dir], CPU, cache_size=3)


def picture(size=(64, 64), seed=0) -> Image.Image:
    """A picture with structure: a gradient, a few coloured blocks, some noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    array = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h - 2, 1)], -1)
    array = np.clip(array + rng.integers(-20, 20, array.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(array, "RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((w // 8, h // 8, w // 3, h // 3), fill=(250, 30, 30))
    draw.ellipse((w // 2, h // 2, w - 4, h - 4), fill=(20, 40, 230))
    return image


def centre_mask(size=(64, 64), box=(24, 24, 40, 40)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def run(loaded, image=None, **fields) -> list[Image.Image]:
    fields = {"width": 64, "height": 64, "steps": 4, "seed": 7, "sampler_name": "Euler",
              "init_images": [image or picture()], **fields}
    request = Img2ImgRequest(prompt="a red cat", **fields)
    return run_img2img(loaded, request, JobControl(), device_settings=CPU, prompt=request.prompt,
                       negative_prompt="").images


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def sd1(manager):
    return manager.load("sd1.safetensors")


# --------------------------------------------------------------------------- img2img


def test_strength_zero_returns_the_input_unchanged(sd1):
    source = picture()
    [out] = run(sd1, source, denoising_strength=0.0)
    assert np.array_equal(px(out), px(source))


def test_same_seed_same_pixels_and_strength_changes_the_picture(sd1):
    a = run(sd1, denoising_strength=0.6, seed=3)[0]
    b = run(sd1, denoising_strength=0.6, seed=3)[0]
    c = run(sd1, denoising_strength=0.6, seed=4)[0]
    assert np.array_equal(px(a), px(b))
    assert np.abs(px(a) - px(c)).max() > 10
    assert np.abs(px(a) - px(picture())).mean() > 5  # it did denoise


def test_batch_items_keep_their_seed_and_cycle_through_init_images(sd1):
    one = run(sd1, picture(seed=1), seed=20)[0]
    two = run(sd1, picture(seed=2), seed=21)[0]
    both = run(sd1, init_images=[picture(seed=1), picture(seed=2)], batch_size=2, seed=20)
    assert np.abs(px(both[0]) - px(one)).max() <= 2
    assert np.abs(px(both[1]) - px(two)).max() <= 2


@pytest.mark.parametrize("mode,size", [("Just resize", (96, 48)), ("Crop and resize", (96, 48)),
                                       ("Resize and fill", (96, 48)), ("Just resize (latent upscale)", (40, 40))])
def test_resize_modes_give_the_requested_size(sd1, mode, size):
    [out] = run(sd1, picture(size), resize_mode=mode, denoising_strength=0.5)
    assert out.size == (64, 64)


def test_resize_and_fill_keeps_the_whole_picture_and_stretches_the_edges():
    wide = picture((64, 32))
    filled = resize_image(wide, "Resize and fill", 64, 64)
    assert np.array_equal(px(filled)[16:48], px(wide))  # centred, not scaled
    assert np.array_equal(px(filled)[0], px(wide)[0]) and np.array_equal(px(filled)[63], px(wide)[-1])
    cropped = resize_image(wide, "Crop and resize", 32, 32)
    assert cropped.size == (32, 32)


# --------------------------------------------------------------------------- inpaint


def outside_blur(mask: Image.Image, blur: int) -> np.ndarray:
    """Pixels the blurred mask does not reach."""
    return np.asarray(masking.blur_mask(mask, blur)) == 0


@pytest.mark.parametrize("content", ["fill", "original", "latent noise", "latent nothing"])
def test_inpaint_changes_only_the_masked_area(sd1, content):
    source, mask = picture(), centre_mask()
    [out] = run(sd1, source, mask=mask, mask_blur=4, inpainting_fill=content, denoising_strength=0.9)
    keep = outside_blur(mask, 4)
    assert keep.mean() > 0.5
    assert np.array_equal(px(out)[keep], px(source)[keep])
    inside = np.asarray(mask) == 255
    assert np.abs(px(out)[inside] - px(source)[inside]).mean() > 5


def test_masked_content_modes_start_from_different_latents(sd1):
    source, mask = picture(), centre_mask()
    outs = {c: px(run(sd1, source, mask=mask, inpainting_fill=c, denoising_strength=0.5)[0])
            for c in ("original", "latent nothing", "fill")}
    assert np.abs(outs["original"] - outs["latent nothing"]).max() > 10
    assert np.abs(outs["original"] - outs["fill"]).max() > 10


def test_fill_spreads_the_surrounding_colour_into_the_hole():
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    image.paste((0, 0, 0), (20, 20, 44, 44))
    filled = masking.fill_masked(image, centre_mask(box=(20, 20, 44, 44)))
    assert np.abs(px(filled)[32, 32] - np.array([200, 40, 40])).max() <= 3


def test_inverted_mask_keeps_the_painted_area(sd1):
    source, mask = picture(), centre_mask(box=(16, 16, 48, 48))
    [out] = run(sd1, source, mask=mask, inpainting_mask_invert=True, mask_blur=0, denoising_strength=0.9)
    inside = np.asarray(mask) == 255
    assert np.array_equal(px(out)[inside], px(source)[inside])
    assert np.abs(px(out)[~inside] - px(source)[~inside]).mean() > 5


def test_only_masked_keeps_the_input_size_and_everything_outside_the_crop(sd1):
    source, mask = picture((128, 96)), centre_mask((128, 96), box=(90, 10, 110, 30))
    [out] = run(sd1, source, mask=mask, inpaint_full_res=True, inpaint_full_res_padding=8, mask_blur=2,
                denoising_strength=0.9)
    assert out.size == (128, 96)
    keep = outside_blur(mask, 2)
    assert np.array_equal(px(out)[keep], px(source)[keep])
    assert np.abs(px(out)[15:25, 95:105] - px(source)[15:25, 95:105]).mean() > 5


def test_crop_region_grows_to_the_target_aspect_inside_the_image():
    box = masking.match_aspect((90, 10, 110, 30), (64, 32), (128, 96))
    x1, y1, x2, y2 = box
    assert (x2 - x1) / (y2 - y1) == pytest.approx(2.0, abs=0.1)
    assert x1 >= 0 and y1 >= 0 and x2 <= 128 and y2 <= 96


def test_a_mask_of_another_size_is_stretched_to_fit(sd1):
    source = picture()
    small = centre_mask((32, 32), box=(12, 12, 20, 20))
    [out] = run(sd1, source, mask=small, mask_blur=0, denoising_strength=0.9)
    stretched = to_mask(small, (64, 64))
    assert stretched.size == (64, 64)
    keep = np.asarray(stretched) == 0
    assert np.array_equal(px(out)[keep], px(source)[keep])


def test_an_empty_mask_is_refused_with_a_clear_message(sd1):
    with pytest.raises(EmptyMaskError, match="mask is empty"):
        run(sd1, mask=Image.new("L", (64, 64), 0))
    with pytest.raises(EmptyMaskError, match="not masked"):
        run(sd1, mask=Image.new("L", (64, 64), 255), inpainting_mask_invert=True)


def test_inpainting_checkpoint_gets_nine_channels_natively(manager):
    loaded = manager.load("sd1-inpainting.safetensors")
    channels: list[int] = []
    hook = loaded.pipe.unet.register_forward_pre_hook(lambda module, args: channels.append(args[0].shape[1]))
    try:
        source, mask = picture(), centre_mask()
        [out] = run(loaded, source, mask=mask, denoising_strength=1.0, mask_blur=2)
        [plain] = run(loaded, source, denoising_strength=0.5)
    finally:
        hook.remove()
    assert channels and set(channels) == {9}
    keep = outside_blur(mask, 2)
    assert np.array_equal(px(out)[keep], px(source)[keep])
    assert plain.size == (64, 64)


def test_sdxl_inpaints_too(manager):
    loaded = manager.load("sdxl.safetensors")
    source, mask = picture(), centre_mask()
    [out] = run(loaded, source, mask=mask, steps=2, denoising_strength=0.8)
    keep = outside_blur(mask, 4)
    assert np.array_equal(px(out)[keep], px(source)[keep])


# --------------------------------------------------------------------------- outpaint


def test_outpaint_grows_the_canvas_exactly_and_keeps_the_middle(sd1):
    source = picture()
    [out] = run(sd1, source, outpaint={"left": 16, "right": 32, "up": 0, "down": 8}, mask_blur=4,
                denoising_strength=0.9, inpainting_fill="fill")
    assert out.size == (64 + 16 + 32, 64 + 8)
    # The picture sits at (16, 0); the mask reaches 8 px (overlap) plus the blur into it.
    _, mask = masking.pad_for_outpaint(source, 16, 32, 0, 8, overlap=8)
    keep = outside_blur(mask, 4)
    placed = px(Image.new("RGB", out.size))
    placed[0:64, 16:80] = px(source)
    assert keep[0:64, 16:80].mean() > 0.25
    assert np.array_equal(px(out)[keep], placed[keep])
    new_right = px(out)[:, 16 + 64 + 8:]
    assert new_right.std() > 1  # something was painted, not a flat fill


def test_outpaint_refuses_sizes_that_are_not_multiples_of_8():
    with pytest.raises(ValueError, match="multiple of 8"):
        Img2ImgRequest(init_images=[picture()], outpaint={"left": 10})


# --------------------------------------------------------------------------- infotext, saving, batch


def test_infotext_has_a1111_img2img_keys(sd1):
    request = Img2ImgRequest(prompt="x", init_images=[picture((96, 96))], mask=centre_mask((96, 96)), width=64,
                             height=64, steps=2, seed=5, denoising_strength=0.4, mask_blur=6,
                             inpainting_fill="latent noise", inpaint_full_res=True, inpaint_full_res_padding=24,
                             inpainting_mask_invert=True, sampler_name="Euler")
    out = run_img2img(sd1, request, JobControl(), device_settings=CPU, prompt="x", negative_prompt="")
    params = parse_infotext(out.infotexts[0])
    assert params["Denoising strength"] == "0.4" and params["Mask blur"] == "6"
    assert params["Masked content"] == "latent noise" and params["Inpaint area"] == "Only masked"
    assert params["Masked area padding"] == "24" and params["Mask mode"] == "Inpaint not masked"
    assert params["Size"] == "64x64" and params["Seed"] == "5"


def test_service_saves_img2img_pictures_in_their_own_folder(app_context):
    request = Img2ImgRequest(prompt="a dog", init_images=[picture()], width=64, height=64, steps=2, seed=9,
                             checkpoint="sd1", sampler_name="Euler", denoising_strength=0.5)
    result = app_context.service.img2img(request)
    [path] = result.paths
    assert path.parent.parent == app_context.root / "outputs" / "img2img-images"
    with Image.open(path) as saved:
        assert parse_infotext(read_infotext(saved))["Denoising strength"] == "0.5"
    assert result.info["denoising_strength"] == 0.5


def test_folder_batch_matches_masks_by_name_and_skips_broken_files(app_context, tmp_path):
    source, masks, target = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    source.mkdir(), masks.mkdir()
    picture(seed=1).save(source / "a.png")
    picture(seed=2).save(source / "b.jpg")
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    centre_mask().save(masks / "a.png")
    fields = dict(prompt="x", width=64, height=64, steps=2, seed=1, checkpoint="sd1", sampler_name="Euler",
                  denoising_strength=0.8, mask_blur=0)
    result = run_folder_batch(app_context.service, fields, source, target, masks, JobControl())
    assert sorted(p.name for p in result.paths) == ["00000-a.png", "00001-b.png"]
    assert [name for name, _ in result.skipped] == ["broken.png"]
    masked_out = result.images[0]
    keep = np.asarray(centre_mask()) == 0
    assert np.array_equal(px(masked_out)[keep], px(picture(seed=1))[keep])  # a.png was inpainted, not redrawn
