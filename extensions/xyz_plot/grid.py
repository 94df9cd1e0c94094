"""Drawing the plot as A1111's draw_grid_annotations does: cells in columns (X) and rows (Y), column
labels on top, row labels on the left (3/4 of a cell wide), `margin` pixels between cells; then the Z
sub-grids side by side under their Z labels. Pillow's own scalable font: no font file is fetched.

Unlike A1111 the margin applies with the legend off too (A1111 drops it with the legend).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = "white"
TEXT = (0, 0, 0)
MIN_FONT = 8  # A1111's size, (cell width + height) / 25, is unreadable for small cells


@dataclass
class Line:
    text: str
    width: int
    height: int


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(int(size), 1))


def _wrap(draw: ImageDraw.ImageDraw, text: str, face, width: int) -> list[str]:
    """Words on lines no wider than `width` (a single long word keeps its own line)."""
    lines = [""]
    for word in text.split():
        joined = f"{lines[-1]} {word}".strip()
        if draw.textlength(joined, font=face) <= width:
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def _layout(draw, labels: list[str], face, width: int) -> list[list[Line]]:
    blocks = []
    for label in labels:
        lines = []
        for text in _wrap(draw, label, face, width):
            box = draw.textbbox((0, 0), text, font=face)
            lines.append(Line(text, box[2] - box[0], box[3] - box[1]))
        blocks.append(lines)
    return blocks


def _block_height(lines: list[Line], spacing: int) -> int:
    return sum(line.height for line in lines) + spacing * (len(lines) - 1) if lines else 0


def _draw_block(draw, x: float, y: float, lines: list[Line], size: int, spacing: int, allowed: int) -> None:
    for line in lines:
        face, shrunk = font(size), size
        while line.width and draw.textlength(line.text, font=face) > allowed and shrunk > 1:
            shrunk -= 1  # a word wider than its column: a smaller font, as A1111
            face = font(shrunk)
        draw.text((x, y + line.height / 2), line.text, font=face, fill=TEXT, anchor="mm")
        y += line.height + spacing


def cell_size(images: list[Image.Image | None]) -> tuple[int, int]:
    """The slot of every cell: the largest picture (smaller ones are centred, as A1111 1.10)."""
    sizes = [im.size for im in images if im is not None]
    return (max(w for w, _ in sizes), max(h for _, h in sizes)) if sizes else (64, 64)


def pads(col_labels: list[str], row_labels: list[str], width: int, height: int) -> tuple[int, int]:
    """(left, top) room the labels take for cells of this size; 0 where every label is empty."""
    size = max((width + height) // 25, MIN_FONT)
    spacing = size // 2
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    face = font(size)
    left = width * 3 // 4 if any(row_labels) else 0
    heights = [_block_height(b, spacing) for b in _layout(draw, col_labels, face, width)]
    top = max(heights) + spacing * 2 if any(col_labels) and max(heights) else 0
    return left, top


def draw_grid(cells: list[Image.Image | None], columns: int, col_labels: list[str], row_labels: list[str],
              margin: int = 0) -> Image.Image:
    """`cells` row by row (None: a cell not made, drawn black); labels may be empty strings."""
    rows = max(1, -(-len(cells) // columns))
    width, height = cell_size(cells)
    size = max((width + height) // 25, MIN_FONT)
    spacing = size // 2
    left, top = pads(col_labels, row_labels, width, height)
    grid = Image.new("RGB", (left + columns * width + margin * (columns - 1),
                             top + rows * height + margin * (rows - 1)), BACKGROUND)
    for index, image in enumerate(cells):
        x = left + (width + margin) * (index % columns)
        y = top + (height + margin) * (index // columns)
        if image is None:
            grid.paste((0, 0, 0), (x, y, x + width, y + height))
        else:
            grid.paste(image.convert("RGB"), (x + (width - image.width) // 2, y + (height - image.height) // 2))
    draw = ImageDraw.Draw(grid)
    face = font(size)
    for col, lines in enumerate(_layout(draw, col_labels, face, width)):
        x = left + (width + margin) * col + width / 2
        _draw_block(draw, x, top / 2 - _block_height(lines, spacing) / 2, lines, size, spacing, width)
    if left:
        for row, lines in enumerate(_layout(draw, row_labels, face, left)):
            y = top + (height + margin) * row + height / 2 - _block_height(lines, spacing) / 2
            _draw_block(draw, left / 2, y, lines, size, spacing, left)
    return grid


def draw_z_grid(sub_grids: list[Image.Image], z_labels: list[str]) -> Image.Image:
    """The sub-grids in one row under their Z labels; one unlabelled sub-grid is the grid itself."""
    if len(sub_grids) == 1 and not any(z_labels):
        return sub_grids[0]
    return draw_grid(list(sub_grids), len(sub_grids), z_labels, [""])


def _quote(value: object) -> str:
    # As the studio's infotext (A1111's quote): JSON-quote what would break "Key: value, ..."
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n"') else text


def with_params(infotext: str, params: dict[str, object]) -> str:
    """A cell's infotext with the plot's entries added to its parameter line (its last line)."""
    extra = ", ".join(f"{key}: {_quote(value)}" for key, value in params.items())
    if not infotext:
        return extra
    return f"{infotext}, {extra}"
