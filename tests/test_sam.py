"""SAM click-to-mask: tiny random models in the released file layout run through the real segment_anything
predictor; detection reads shapes (the real ViT-B/L/H checked on the meta device); the embedding is computed
once per picture; bad and hostile files are refused while the library keeps serving; the mask helpers."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from segment_anything import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l

from backend.extras.segment import (
    SamLibrary,
    SamModelNotFound,
    Segment,
    SegmentError,
    blend_mask,
    detect_config,
    feather_mask,
    grow_mask,
    masked_image,
    pick_segment,
)
from backend.extras.segment.model import build_sam, load_sam
from tests.fixtures.tiny_sam import TINY, noise_picture, picture, tiny_sam, write_hostile_sam, write_tiny_sam

CPU = torch.device("cpu")
NAME = "sam_tiny.pth"


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam")
    write_tiny_sam(folder / NAME, seed=0)
    return folder


@pytest.fixture
def library(sam_dir):
    return SamLibrary([sam_dir], CPU, torch.float32)


def meta_shapes(factory) -> list[tuple[str, tuple[int, ...]]]:
    with torch.device("meta"):
        model = factory()
    return [(key, tuple(t.shape)) for key, t in model.state_dict().items()]


# --- reading files -----------------------------------------------------------

def test_released_models_are_told_apart_by_shapes_without_allocating():
    for factory, kind in ((build_sam_vit_b, "vit_b"), (build_sam_vit_l, "vit_l"), (build_sam_vit_h, "vit_h")):
        shapes = meta_shapes(factory)
        config = detect_config(dict(shapes), kind)
        assert config.model_type == kind
        # our builder, fed the detected config, makes exactly segment_anything's model
        with torch.device("meta"):
            ours = build_sam(config)
        assert [(k, tuple(t.shape)) for k, t in ours.state_dict().items()] == shapes


def test_tiny_sam_round_trips_bit_for_bit(sam_dir):
    config = detect_config(tiny_sam(0).state_dict())
    assert (config.img_size, config.embed_dim, config.depth, config.num_heads, config.window_size,
            config.global_attn_indexes) == (64, 32, 2, 2, 2, (1,))
    assert config.model_type == "custom"
    sam, _ = load_sam(sam_dir / NAME, CPU, torch.float32)
    saved = torch.load(sam_dir / NAME, weights_only=True)
    loaded = sam.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert sam.image_encoder.img_size == TINY["img_size"]


def test_type_comes_from_shapes_not_the_name_and_safetensors_headers_suffice(tmp_path):
    write_tiny_sam(tmp_path / "sam_vit_h_4b8939.pth")
    save_file({k: v.contiguous() for k, v in tiny_sam(1).state_dict().items()}, str(tmp_path / "sam.safetensors"))
    library = SamLibrary([tmp_path], CPU)
    assert library.model_names() == ["sam.safetensors", "sam_vit_h_4b8939.pth"]
    assert library.model_type("sam_vit_h_4b8939.pth") == "custom"
    assert library.model_type("sam.safetensors") == "custom"
    assert len(library.predict("sam.safetensors", picture(), [(10, 10)]).masks) == 3


def test_files_that_are_not_sam_are_refused_with_the_reason(tmp_path, sam_dir):
    good = tiny_sam(0).state_dict()
    cases = {
        "other.pth": ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)},
                      "not a Segment Anything model"),
        "sam_hq_vit_b.pth": ({**good, "mask_decoder.hf_token.weight": torch.zeros(1, 32)}, "SAM-HQ"),
        "mobile_sam.pt": ({"image_encoder.layers.0.blocks.0.attn.qkv.weight": torch.zeros(3, 3),
                           "mask_decoder.iou_token.weight": torch.zeros(1, 32)}, "MobileSAM"),
        "no_neck.pth": ({k: v for k, v in good.items() if "neck" not in k}, "image_encoder.neck.0.weight is missing"),
        "bad_qkv.pth": ({**good, "image_encoder.blocks.0.attn.qkv.weight": torch.zeros(90, 32)},
                        "image_encoder.blocks.0.attn.qkv.weight"),
    }
    for name, (weights, _) in cases.items():
        torch.save(weights, tmp_path / name)
    shutil.copy(sam_dir / NAME, tmp_path / NAME)
    library = SamLibrary([tmp_path], CPU)
    for name, (_, needle) in cases.items():
        with pytest.raises(SegmentError, match=needle) as err:
            library.predict(name, picture(), [(10, 10)])
        assert name in str(err.value)
    with pytest.raises(SegmentError, match="not a Segment Anything"):
        library.model_type("other.pth")
    assert len(library.predict(NAME, picture(), [(10, 10)]).masks) == 3  # still serving


def test_hostile_pickle_runs_nothing_and_the_loaded_model_keeps_serving(tmp_path, sam_dir):
    marker = tmp_path / "ran"
    shutil.copy(sam_dir / NAME, tmp_path / NAME)
    write_hostile_sam(tmp_path / "sam_vit_b_01ec64.pth", marker)
    library = SamLibrary([tmp_path], CPU)
    before = library.predict(NAME, picture(), [(20, 20)])
    with pytest.raises(SegmentError, match="refused to load") as err:
        library.predict("sam_vit_b_01ec64.pth", picture(), [(20, 20)])
    assert "No code from the file was run" in str(err.value)
    with pytest.raises(SegmentError):
        library.model_type("sam_vit_b_01ec64.pth")
    assert not marker.exists()
    after = library.predict(NAME, picture(), [(20, 20)])
    assert library.encoder_runs == 1  # the same model and embedding, untouched by the failure
    assert all(np.array_equal(a, b) for a, b in zip(before.masks, after.masks))


def test_unknown_model_names_the_folders_and_what_is_installed(library, sam_dir):
    with pytest.raises(SamModelNotFound) as err:
        library.predict("sam_vit_h_4b8939.pth", picture(), [(1, 1)])
    assert str(sam_dir) in str(err.value) and NAME in str(err.value)


# --- click to mask -----------------------------------------------------------

def test_three_masks_of_the_pictures_size_that_depend_on_the_click(library):
    image = picture(96, 80)
    first = library.predict(NAME, image, positive=[(20, 20)])
    assert len(first.masks) == 3 and len(first.scores) == 3
    assert all(m.dtype == bool and m.shape == (80, 96) for m in first.masks)
    other = library.predict(NAME, image, positive=[(80, 70)])
    assert any(not np.array_equal(a, b) for a, b in zip(first.masks, other.masks))
    again = library.predict(NAME, image.copy(), positive=[(20, 20)])
    assert all(np.array_equal(a, b) for a, b in zip(first.masks, again.masks))


def test_the_encoder_runs_once_per_picture(library):
    image = picture()
    library.predict(NAME, image, [(20, 20)])
    assert library.encoder_runs == 1
    library.predict(NAME, image, [(60, 50)], negative=[(5, 5)])
    library.predict(NAME, Image.fromarray(np.asarray(image)), [(30, 30)])  # same pixels, another object
    assert library.encoder_runs == 1
    library.predict(NAME, picture(shift=3), [(20, 20)])
    assert library.encoder_runs == 2


def test_the_embedding_cache_is_a_small_lru(sam_dir):
    one = SamLibrary([sam_dir], CPU, embedding_cache=1)
    two = SamLibrary([sam_dir], CPU, embedding_cache=2)
    for library in (one, two):
        for image in (picture(), picture(shift=4), picture()):
            library.predict(NAME, image, [(10, 10)])
    assert (one.encoder_runs, two.encoder_runs) == (3, 2)


def test_prompts_are_checked_against_the_picture(library):
    image = picture(96, 80)
    with pytest.raises(SegmentError, match=r"positive point 2 \(100, 10\) is outside the 96x80 picture"):
        library.predict(NAME, image, [(5, 5), (100, 10)])
    with pytest.raises(SegmentError, match=r"negative point 1 \(10, -1\)"):
        library.predict(NAME, image, [(5, 5)], negative=[(10, -1)])
    with pytest.raises(SegmentError, match="at least one point"):
        library.predict(NAME, image)
    with pytest.raises(SegmentError, match="empty"):
        library.predict(NAME, image, box=(50, 10, 20, 40))
    with pytest.raises(SegmentError, match="outside"):
        library.predict(NAME, image, box=(0, 0, 97, 40))
    assert library.encoder_runs == 0  # refused before any work
    negative_only = library.predict(NAME, image, negative=[(20, 20)])  # allowed, as in the extension
    boxed = library.predict(NAME, image, box=(5, 5, 45, 45))
    assert len(negative_only.masks) == len(boxed.masks) == 3


def test_concurrent_clicks_on_different_pictures_do_not_mix(sam_dir):
    library = SamLibrary([sam_dir], CPU, embedding_cache=0)  # every click sets its picture again
    pictures = [picture(), noise_picture(96, 80, seed=1)]
    expected = [library.predict(NAME, p, [(30, 30)]).masks for p in pictures]
    wrong = []

    def click(index: int) -> None:
        for _ in range(6):
            try:
                got = library.predict(NAME, pictures[index], [(30, 30)]).masks
            except Exception as exc:  # noqa: BLE001 - without the lock: the other thread's reset_image
                wrong.append(exc)
                return
            wrong.extend(i for a, b in zip(got, expected[index]) if not np.array_equal(a, b))

    threads = [threading.Thread(target=click, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_a_replaced_file_is_reloaded_and_a_removed_one_refused(tmp_path):
    write_tiny_sam(tmp_path / NAME, seed=0)
    library = SamLibrary([tmp_path], CPU)
    before = library.predict(NAME, picture(), [(20, 20)]).scores
    write_tiny_sam(tmp_path / NAME, seed=5)
    library.refresh()
    assert library.predict(NAME, picture(), [(20, 20)]).scores != before
    (tmp_path / NAME).unlink()
    library.refresh()
    assert library.model_names() == []
    with pytest.raises(SamModelNotFound):
        library.predict(NAME, picture(), [(20, 20)])


def test_bf16_encoder_with_float32_decoder(sam_dir, library):
    half = SamLibrary([sam_dir], CPU, torch.bfloat16)
    a = half.predict(NAME, picture(), [(20, 20)])
    b = library.predict(NAME, picture(), [(20, 20)])
    agree = np.mean([np.mean(x == y) for x, y in zip(a.masks, b.masks)])
    assert agree > 0.9


# --- segment everything ------------------------------------------------------

EVERYTHING = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def test_everything_finds_segments_and_a_click_picks_the_one_under_it(library):
    image = picture(96, 80)
    segments = library.everything(NAME, image, **EVERYTHING)
    assert len(segments) > 1
    assert all(s.mask.shape == (80, 96) and s.mask.dtype == bool and s.area == int(s.mask.sum()) for s in segments)
    assert [s.area for s in segments] == sorted((s.area for s in segments), reverse=True)
    x, y = 20, 20
    index = pick_segment(segments, x, y)
    assert index is not None and segments[index].mask[y, x]
    under = [s.area for s in segments if s.mask[y, x]]
    assert segments[index].area == min(under)
    assert library.everything(NAME, image, points_per_side=2, pred_iou_thresh=0.99, stability_score_thresh=0.99) \
        is not None
    library.predict(NAME, image, [(x, y)])
    assert library.encoder_runs == 1  # everything() and the click share one embedding
    with pytest.raises(SegmentError, match="unknown segment-everything option"):
        library.everything(NAME, image, point_per_side=4)


def test_pick_segment_prefers_the_smallest_and_misses_outside():
    big = np.zeros((10, 10), bool)
    big[1:9, 1:9] = True
    small = np.zeros((10, 10), bool)
    small[3:5, 3:5] = True
    segments = [Segment(big, int(big.sum()), (1, 1, 8, 8), 0.9), Segment(small, 4, (3, 3, 2, 2), 0.9)]
    assert pick_segment(segments, 3.5, 4.2) == 1
    assert pick_segment(segments, 7, 7) == 0
    assert pick_segment(segments, 0, 0) is None
    assert pick_segment(segments, 50, 3) is None


# --- mask helpers ------------------------------------------------------------

def square(size: int = 40, lo: int = 12, hi: int = 28) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[lo:hi, lo:hi] = True
    return mask


def test_grow_and_shrink_change_the_area_monotonically():
    mask = square()
    areas = [int(grow_mask(mask, px).sum()) for px in range(-6, 7)]
    assert areas == sorted(areas) and len(set(areas)) == len(areas)
    assert np.array_equal(grow_mask(mask, 0), mask)
    assert int(grow_mask(mask, -8).sum()) == 0
    dot = np.zeros((41, 41), bool)
    dot[20, 20] = True
    disk = grow_mask(dot, 10)
    assert abs(int(disk.sum()) - np.pi * 10 ** 2) < 40 and disk[20, 30] and not disk[28, 28]
    edge = np.zeros((20, 20), bool)
    edge[:, :8] = True  # touches the left border: shrinking keeps it there
    assert grow_mask(edge, -3)[:, 0].all() and not grow_mask(edge, -3)[:, 5].any()
    assert np.array_equal(grow_mask(Image.fromarray(mask.astype(np.uint8) * 255), 2), grow_mask(mask, 2))


def test_feather_gives_intermediate_values_and_blend_tints_only_inside():
    mask = square()
    soft = np.asarray(feather_mask(mask, 3))
    assert soft.dtype == np.uint8 and soft[20, 20] > 240 and soft[0, 0] == 0
    assert ((soft > 10) & (soft < 245)).sum() > 20
    assert set(np.unique(np.asarray(feather_mask(mask, 0)))) == {0, 255}
    image = Image.new("RGB", (40, 40), (200, 100, 50))
    blended = np.asarray(blend_mask(image, mask, color=(0, 0, 255), alpha=0.5))
    assert blended[0, 0].tolist() == [200, 100, 50] and blended[20, 20].tolist() == [100, 50, 153]
    cut = masked_image(image, mask)
    assert cut.mode == "RGBA"
    assert np.asarray(cut)[0, 0].tolist() == [0, 0, 0, 0] and np.asarray(cut)[20, 20].tolist() == [200, 100, 50, 255]
    with pytest.raises(SegmentError, match="40x40"):
        blend_mask(Image.new("RGB", (30, 30)), mask)
