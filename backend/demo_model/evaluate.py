"""Measure whether the demo model follows its prompts, with criteria anyone can check.

    python -m backend.demo_model.evaluate [--checkpoint PATH] [--steps 20]

- Colour: the foreground (pixels far from the border's median colour) has a
  median colour; its nearest named colour must be the prompt's.
- Shape: a hole at the centre of the foreground's box is a ring; otherwise
  the circle, square, triangle or star that overlaps the foreground most
  (IoU), drawn as the scenes draw it with the foreground's area and centroid
  at the best of 12 turns, with sharp or rounded corners. It names every
  rendered scene right, and more blurred or decoded ones than the
  outline-spread measure it replaced (tests/test_demo_evaluate.py).
- Position: the foreground's centroid is nearest the named position's point.
- Background: the border's median colour is nearest the named background.
- Prompts: colour x shape pairs held out of training, each said two ways:
  briefly, and with size, position and background.
- Adherence: the mean of colour and shape adherence, the two every prompt
  names. CFG 7 must beat CFG 1 on it by 10 points or more, and on neither
  measure may it fall behind.
- Whole-prompt adherence: the share of all attributes the prompts name
  (colour, shape, and in the long prompts position and background) that
  the pictures show; reported, so position and background are seen too.
- Negative prompt: "a circle" with and without the negative prompt "red": red
  images, images in red's family (red, orange, pink, brown), red pixels.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from backend.demo_model.scenes import BACKGROUNDS, COLOURS, HELD_OUT, POSITIONS, SIZES, SYMMETRY, outline

PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[n] for n in PALETTE_NAMES], dtype=np.float32)
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as foreground
MIN_FOREGROUND = 0.01  # below this share of pixels, nothing was drawn
# Red and its neighbours on the hue circle: in a 12-colour palette a reddish picture often lands on one of
# these, so a negative "red" must empty the whole family, not only the one name.
RED_FAMILY = frozenset({"red", "orange", "pink", "brown"})
# Issue 3's goals at CFG 7, held by the report below and by tests/test_demo_model.py.
COLOUR_GOAL, SHAPE_GOAL, CFG_GAIN_GOAL = 0.9, 0.7, 0.1
SOFTNESS = (0.0, 0.3)  # shape templates with sharp and with rounded corners: drawn shapes are rarely crisp


def nearest_colour(rgb: np.ndarray) -> str:
    return PALETTE_NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(axis=1)))]


def _border_median(pixels: np.ndarray) -> np.ndarray:
    return np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]), axis=0)


def foreground_mask(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return np.sqrt(((pixels - _border_median(pixels)) ** 2).sum(axis=2)) > FOREGROUND_DISTANCE


def background_colour(image: Image.Image) -> str:
    return nearest_colour(_border_median(np.asarray(image.convert("RGB"), dtype=np.float32)))


def position_of(image: Image.Image) -> str | None:
    """The named position nearest the foreground's centroid."""
    mask = foreground_mask(image)
    if mask.mean() < MIN_FOREGROUND:
        return None
    rows, cols = np.where(mask)
    x, y = cols.mean() / mask.shape[1], rows.mean() / mask.shape[0]
    return min(POSITIONS, key=lambda name: (POSITIONS[name][0] - x) ** 2 + (POSITIONS[name][1] - y) ** 2)


def dominant_colour(image: Image.Image) -> str | None:
    mask = foreground_mask(image)
    if mask.mean() < MIN_FOREGROUND:
        return None
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)[mask]
    return nearest_colour(np.median(pixels, axis=0))


def colour_share(image: Image.Image, colour: str) -> float:
    """Share of all pixels whose nearest named colour is `colour`."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    nearest = np.argmin(((pixels[:, None, :] - PALETTE[None]) ** 2).sum(axis=2), axis=1)
    return float((nearest == PALETTE_NAMES.index(colour)).mean())


def _area_and_centroid(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Area and area centroid of a simple polygon (the shoelace formula)."""
    x, y = np.array(points, dtype=np.float64).T
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2
    return abs(area), ((x + x1) * cross).sum() / (6 * area), ((y + y1) * cross).sum() / (6 * area)


def template_mask(shape: str, area: float, centre: tuple[float, float], rotation: float, size: int,
                  softness: float = 0.0) -> np.ndarray:
    """A (size, size) mask of the shape as the scenes draw it, scaled to `area` pixels, its area centroid at
    `centre` (x, y), turned by `rotation`; drawn at twice the size and shrunk, so edges are fair. A
    softness above 0 rounds its corners (a blur of that share of its radius, cut at half)."""
    picture = Image.new("L", (2 * size, 2 * size), 0)
    draw = ImageDraw.Draw(picture)
    cx, cy = centre
    if shape == "circle":
        r = math.sqrt(area / math.pi)
        draw.ellipse([2 * (cx - r), 2 * (cy - r), 2 * (cx + r), 2 * (cy + r)], fill=255)
    else:
        unit_area, _, _ = _area_and_centroid(outline(shape, 1.0, 0.0))
        r = math.sqrt(area / unit_area)
        points = outline(shape, r, rotation)
        _, gx, gy = _area_and_centroid(points)
        draw.polygon([(2 * (x - gx + cx), 2 * (y - gy + cy)) for x, y in points], fill=255)
    if softness:
        picture = picture.filter(ImageFilter.GaussianBlur(2 * softness * r))
    return np.asarray(picture.resize((size, size), Image.Resampling.BOX)) > 127


def classify_shape(image: Image.Image) -> str | None:
    """A hole at the centre of the foreground's box makes a ring; otherwise the shape whose template,
    with the foreground's area and centroid, at the best of 12 turns, with sharp or rounded corners,
    overlaps it most (IoU). Whole templates read a shape drawn with soft corners as itself (a rounded
    triangle is still nearer a triangle than a square), where the outline's spread did not."""
    mask = foreground_mask(image)
    if mask.mean() < MIN_FOREGROUND:
        return None
    rows, cols = np.where(mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    box = mask[top:bottom + 1, left:right + 1]
    h, w = box.shape
    if box[int(h * 0.4):int(h * 0.6) + 1, int(w * 0.4):int(w * 0.6) + 1].mean() < 0.3:
        return "ring"
    centre, area = (cols.mean() + 0.5, rows.mean() + 0.5), float(mask.sum())

    def overlap(shape: str, rotation: float, softness: float) -> float:
        template = template_mask(shape, area, centre, rotation, mask.shape[0], softness)
        return (template & mask).sum() / max((template | mask).sum(), 1)

    candidates = [("circle", 0.0, 0.0)] + [(shape, SYMMETRY[shape] * k / 12, softness)
                                           for shape in ("square", "triangle", "star") for k in range(12)
                                           for softness in SOFTNESS]
    return max(candidates, key=lambda c: overlap(*c))[0]


def to_tensor(images: list[Image.Image]):
    """RGB pictures as a (n, 3, h, w) float tensor in [-1, 1], as the VAE takes them."""
    import torch

    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def to_images(pixels) -> list[Image.Image]:
    array = ((pixels.permute(0, 2, 3, 1).float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    return [Image.fromarray(a) for a in array]


def reconstruction_scores(vae, count: int = 48, seed: int = 123, size: int = 128) -> Scores:
    """Encode and decode rendered scenes (held-out pairs included) and score what comes back.

    The ceiling of the whole model: the UNet's pictures reach the screen through this decoder.
    """
    import random

    import torch

    from backend.demo_model.scenes import random_scene, render

    rng = random.Random(seed)
    scenes = [random_scene(rng, allow_held_out=True) for _ in range(count)]
    with torch.no_grad():
        pixels = to_tensor([render(s, size) for s in scenes]).to(vae.device, vae.dtype)
        decoded = to_images(vae.decode(vae.encode(pixels).latent_dist.mean).sample)
    return score(decoded, [Expected(s.colour, s.shape, s.position, s.background) for s in scenes])


@dataclass(frozen=True)
class Expected:
    """What a prompt names; position and background only when it names them."""
    colour: str
    shape: str
    position: str | None = None
    background: str | None = None


def held_out_prompts() -> list[tuple[str, Expected]]:
    """(prompt, what it names): every held-out pair, said briefly and in full."""
    prompts = []
    for i, (colour, shape) in enumerate(sorted(HELD_OUT)):
        background = [b for b in BACKGROUNDS if b != colour][i % (len(BACKGROUNDS) - 1)]
        position, size = list(POSITIONS)[i % len(POSITIONS)], list(SIZES)[i % len(SIZES)]
        where = "in the centre" if position == "centre" else f"at the {position}"
        prompts.append((f"a {colour} {shape}", Expected(colour, shape)))
        prompts.append((f"a {size} {colour} {shape} {where} on a {background} background",
                        Expected(colour, shape, position, background)))
    return prompts


@dataclass
class Scores:
    colour: float
    shape: float
    count: int
    position: float | None = None  # over the prompts that name one
    background: float | None = None
    whole_prompt: float = 0.0  # share of every named attribute, all prompts together

    @property
    def adherence(self) -> float:
        """Colour and shape adherence together: what every prompt names."""
        return (self.colour + self.shape) / 2


def _share(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def score(images: list[Image.Image], expected: list[Expected]) -> Scores:
    colour = [dominant_colour(im) == e.colour for im, e in zip(images, expected)]
    shape = [classify_shape(im) == e.shape for im, e in zip(images, expected)]
    position = [position_of(im) == e.position for im, e in zip(images, expected) if e.position]
    background = [background_colour(im) == e.background for im, e in zip(images, expected) if e.background]
    named = colour + shape + position + background
    return Scores(colour=_share(colour), shape=_share(shape), count=len(images), position=_share(position),
                  background=_share(background), whole_prompt=_share(named))


class DemoEvaluator:
    """Generates through the studio's own loader and runner, so the shipped file is what is measured."""

    def __init__(self, checkpoint: Path, steps: int = 20, sampler: str = "Euler a", precision: str = "full"):
        from backend.devices import DeviceSettings
        from backend.models.manager import ModelManager

        # fp32 by default, so scores compare across machines; "auto" measures what this machine's studio runs.
        self.device = DeviceSettings.from_flags(precision=precision)
        manager = ModelManager([], self.device, builtin=[checkpoint])
        self.loaded = manager.load(checkpoint.name)
        self.steps, self.sampler = steps, sampler
        self.size = self.loaded.variant.native_size

    def generate(self, prompt: str, seed: int, cfg: float = 7.0, negative: str = "") -> Image.Image:
        from backend.generation.job import JobControl
        from backend.generation.request import Txt2ImgRequest
        from backend.generation.txt2img import run_txt2img

        request = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, steps=self.steps, cfg_scale=cfg,
                                 width=self.size, height=self.size, seed=seed, sampler_name=self.sampler)
        return run_txt2img(self.loaded, request, JobControl(), device_settings=self.device, prompt=prompt,
                           negative_prompt=negative).images[0]

    def generate_batch(self, prompt: str, first_seed: int, count: int, negative: str = "",
                       cfg: float = 7.0) -> list[Image.Image]:
        """Pictures of seeds first_seed .. first_seed + count - 1, in the largest batches: the same pictures
        as one `generate` per seed (to a level of float noise), about 1.7x faster on a CPU."""
        from backend.generation.job import JobControl
        from backend.generation.request import MAX_BATCH_SIZE, Txt2ImgRequest
        from backend.generation.txt2img import run_txt2img

        images = []
        for start in range(first_seed, first_seed + count, MAX_BATCH_SIZE):
            size = min(MAX_BATCH_SIZE, first_seed + count - start)
            request = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, steps=self.steps, cfg_scale=cfg,
                                     width=self.size, height=self.size, seed=start, sampler_name=self.sampler,
                                     batch_size=size)
            images += run_txt2img(self.loaded, request, JobControl(), device_settings=self.device, prompt=prompt,
                                  negative_prompt=negative).images
        return images

    def adherence(self, prompts: list[tuple[str, Expected]], cfg: float, seed: int = 1000, rounds: int = 1) -> Scores:
        """Scores of one picture per prompt and round; round r uses seeds seed + 1000 r + i."""
        seeds = [(seed + 1000 * r + i, p, e) for r in range(rounds) for i, (p, e) in enumerate(prompts)]
        images = [self.generate(p, s, cfg) for s, p, _ in seeds]
        return score(images, [e for _, _, e in seeds])

    def negative_prompt_effect(self, seeds: int = 48, seed: int = 5000) -> dict[str, float]:
        plain = self.generate_batch("a circle", seed, seeds)
        negated = self.generate_batch("a circle", seed, seeds, negative="red")
        plain_colours = [dominant_colour(im) for im in plain]
        negated_colours = [dominant_colour(im) for im in negated]
        return {
            "seeds": seeds,
            "red_images_without": plain_colours.count("red"),
            "red_images_with_negative": negated_colours.count("red"),
            "red_family_without": sum(c in RED_FAMILY for c in plain_colours),
            "red_family_with_negative": sum(c in RED_FAMILY for c in negated_colours),
            "red_share_without": float(np.mean([colour_share(im, "red") for im in plain])),
            "red_share_with_negative": float(np.mean([colour_share(im, "red") for im in negated])),
        }


@dataclass
class Report:
    """The issue's four prompt measures for one checkpoint, and the goals they are held to."""
    at7: Scores
    at1: Scores
    negative: dict[str, float]

    def lines(self) -> list[str]:
        at7, at1, negative = self.at7, self.at1, self.negative
        return [
            f"held-out prompts: {at7.count} pictures at each CFG ({len(HELD_OUT)} colour x shape pairs never seen "
            "in training)",
            f"colour adherence  CFG 7: {at7.colour:.0%}   CFG 1: {at1.colour:.0%}   (goal >= {COLOUR_GOAL:.0%} at CFG 7)",
            f"shape adherence   CFG 7: {at7.shape:.0%}   CFG 1: {at1.shape:.0%}   (goal >= {SHAPE_GOAL:.0%} at CFG 7)",
            f"position (long prompts)    CFG 7: {at7.position:.0%}   CFG 1: {at1.position:.0%}",
            f"background (long prompts)  CFG 7: {at7.background:.0%}   CFG 1: {at1.background:.0%}",
            f"adherence (colour and shape)  CFG 7: {at7.adherence:.0%}   CFG 1: {at1.adherence:.0%}   "
            f"(goal: {100 * CFG_GAIN_GOAL:.0f} points higher at 7)",
            f"whole prompt (all named)      CFG 7: {at7.whole_prompt:.0%}   CFG 1: {at1.whole_prompt:.0%}",
            f"'a circle', {negative['seeds']} seeds: red images {negative['red_images_without']} without, "
            f"{negative['red_images_with_negative']} with negative prompt 'red'; red, orange, pink or brown "
            f"{negative['red_family_without']} -> {negative['red_family_with_negative']}; red pixel share "
            f"{negative['red_share_without']:.3f} -> {negative['red_share_with_negative']:.3f}",
        ]

    def shortfalls(self) -> list[str]:
        """The goals this checkpoint misses, each said with its number; empty when it meets them all."""
        missed = []
        if self.at7.colour < COLOUR_GOAL:
            missed.append(f"colour {self.at7.colour:.0%} < {COLOUR_GOAL:.0%}")
        if self.at7.shape < SHAPE_GOAL:
            missed.append(f"shape {self.at7.shape:.0%} < {SHAPE_GOAL:.0%}")
        gain = self.at7.adherence - self.at1.adherence
        if gain < CFG_GAIN_GOAL:
            missed.append(f"CFG 7 only {100 * gain:+.0f} points over CFG 1 (goal {100 * CFG_GAIN_GOAL:+.0f})")
        if self.negative["red_family_with_negative"] >= self.negative["red_family_without"]:
            missed.append(f"negative 'red' does not lessen red's family ({self.negative['red_family_without']} -> "
                          f"{self.negative['red_family_with_negative']})")
        return missed


def measure(checkpoint: Path, steps: int = 20, rounds: int = 1, negative_seeds: int = 48,
            precision: str = "full") -> Report:
    """Generate the held-out prompts at CFG 7 and 1 and the negative-prompt pairs, and score them."""
    evaluator = DemoEvaluator(checkpoint, steps=steps, precision=precision)
    prompts = held_out_prompts()
    return Report(at7=evaluator.adherence(prompts, cfg=7.0, rounds=rounds),
                  at1=evaluator.adherence(prompts, cfg=1.0, rounds=rounds),
                  negative=evaluator.negative_prompt_effect(seeds=negative_seeds))


def main(argv: list[str] | None = None) -> None:
    from backend.app_context import DEMO_CHECKPOINT

    ap = argparse.ArgumentParser(description="Prompt adherence of the demo checkpoint")
    ap.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1, help="pictures per prompt, each on its own seed (tests: 1)")
    ap.add_argument("--precision", default="full", choices=("full", "bf16", "auto"),
                    help="full: fp32 (the recorded scores); bf16: UNet and text encoder in bf16, VAE fp32; "
                         "auto: as the studio on this machine")
    args = ap.parse_args(argv)
    report = measure(args.checkpoint, steps=args.steps, rounds=args.rounds, precision=args.precision)
    print("\n".join(report.lines()))
    missed = report.shortfalls()
    print("goals missed: " + "; ".join(missed) if missed else "all four goals met")


if __name__ == "__main__":
    main()
