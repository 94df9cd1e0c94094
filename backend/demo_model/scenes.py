"""Synthetic scenes with plain-English captions: the demo model's training data.

One scene is a single filled shape of one named colour on a plain background,
at one of nine positions and three sizes. `render` draws it; `caption` says
it the way a user would type it. Everything is reproducible from a seed.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 50),
    "cyan": (40, 200, 210),
    "blue": (30, 70, 220),
    "purple": (130, 50, 190),
    "pink": (245, 130, 190),
    "brown": (120, 75, 35),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
BACKGROUNDS = ("white", "black", "gray", "blue", "green", "yellow", "pink", "brown")
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25), "top": (0.5, 0.25), "top right": (0.75, 0.25),
    "left": (0.25, 0.5), "centre": (0.5, 0.5), "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75), "bottom": (0.5, 0.75), "bottom right": (0.75, 0.75),
}
# Shape width / image width. Small shapes at 0.28 came back from the VAE as the wrong shape one time in three
# (small stars as squares), and no UNet draws them better than its VAE decodes them.
SIZES: dict[str, float] = {"small": 0.34, "medium": 0.43, "large": 0.52}
# Each shape's outline, in units of the radius r = size * width / 2 (`outline`, `render`).
SQUARE_HALF_SIDE = 0.86
TRIANGLE_RADIUS = 1.1
STAR_RADII = (1.05, 0.42)  # points, notches
SYMMETRY = {"square": math.pi / 2, "triangle": 2 * math.pi / 3, "star": 2 * math.pi / 5}  # turn that maps it onto itself

# Colour x shape pairs never shown in training: the held-out test of compositional adherence.
HELD_OUT: frozenset[tuple[str, str]] = frozenset({
    ("red", "star"), ("orange", "ring"), ("yellow", "square"), ("green", "triangle"), ("cyan", "circle"),
    ("blue", "star"), ("purple", "square"), ("pink", "triangle"), ("brown", "circle"), ("white", "ring"),
    ("gray", "star"), ("black", "triangle"),
})


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    position: str
    size: str
    jitter: tuple[float, float] = (0.0, 0.0)  # small offset of the centre, in image widths
    rotation: float = 0.0  # radians; squares, triangles and stars turn a little

    def caption(self, colour: bool = True, shape: bool = True, size: bool = True, position: bool = True,
                background: bool = True) -> str:
        """The scene in words, naming only the chosen attributes: "a red star", "a star",
        "a red shape", "a small star at the top left on a blue background"."""
        words = ["a"]
        if size:
            words.append(self.size)
        if colour:
            words.append(self.colour)
        words.append(self.shape if shape else "shape")
        if position:
            words += ["at the", self.position] if self.position != "centre" else ["in the centre"]
        if background:
            words += ["on a", self.background, "background"]
        return " ".join(words)

    def tags(self, colour: bool = True, shape: bool = True, size: bool = True, position: bool = True,
             background: bool = True) -> str:
        """The chosen attributes as comma-separated tags, the way many prompts are typed:
        "red, star, small, top left, blue background"; only the colour: "red"."""
        named = [(colour, self.colour), (shape, self.shape), (size, self.size), (position, self.position),
                 (background, f"{self.background} background")]
        return ", ".join(word for chosen, word in named if chosen)


def random_scene(rng: random.Random, allow_held_out: bool = False) -> Scene:
    while True:
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        if allow_held_out or (colour, shape) not in HELD_OUT:
            break
    background = rng.choice([b for b in BACKGROUNDS if b != colour])
    return Scene(shape=shape, colour=colour, background=background, position=rng.choice(list(POSITIONS)),
                 size=rng.choice(list(SIZES)), jitter=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)),
                 rotation=rng.uniform(-0.2, 0.2))


def _polygon(cx: float, cy: float, radii: list[float], rotation: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [(cx + r * math.sin(rotation + 2 * math.pi * i / n), cy - r * math.cos(rotation + 2 * math.pi * i / n))
            for i, r in enumerate(radii)]


def outline(shape: str, r: float, rotation: float) -> list[tuple[float, float]]:
    """Corners of a square, triangle or star of radius r around (0, 0), as `render` draws them."""
    if shape == "square":
        half = r * SQUARE_HALF_SIDE
        c, s = math.cos(rotation), math.sin(rotation)
        return [(x * c - y * s, x * s + y * c) for x, y in [(-half, -half), (half, -half), (half, half), (-half, half)]]
    if shape == "triangle":
        return _polygon(0.0, 0.0, [r * TRIANGLE_RADIUS] * 3, rotation)
    if shape == "star":
        return _polygon(0.0, 0.0, [r * STAR_RADII[0], r * STAR_RADII[1]] * 5, rotation)
    raise ValueError(f"{shape!r} has no corners")


def render(scene: Scene, size: int = 128, supersample: int = 4) -> Image.Image:
    """Draw the scene (antialiased by drawing large and shrinking)."""
    big = size * supersample
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position]
    cx, cy = (fx + scene.jitter[0]) * big, (fy + scene.jitter[1]) * big
    r = SIZES[scene.size] * big / 2
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=COLOURS[scene.background])
    elif scene.shape == "square":
        draw.polygon([(cx + x, cy + y) for x, y in outline("square", r, scene.rotation)], fill=fill)
    elif scene.shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, [r * TRIANGLE_RADIUS] * 3, scene.rotation), fill=fill)
    elif scene.shape == "star":
        draw.polygon(_polygon(cx, cy + r * 0.05, [r * STAR_RADII[0], r * STAR_RADII[1]] * 5, scene.rotation), fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return image.resize((size, size), Image.Resampling.LANCZOS)
