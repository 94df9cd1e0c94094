"""The X/Y/Z plot from the page, in a real browser, on the demo model: the values inputs follow the axis type
(a text box for Seed, the samplers' dropdown for Sampler, text boxes in csv mode), Generate shows the grid,
and each of its cells is the picture a plain job with that seed and sampler makes."""
from __future__ import annotations

import base64
import io
import json
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.launched import launch_studio
from tests.test_browser import NEEDS_CHROMIUM, _studio_page

pytestmark = pytest.mark.browser

SIZE, STEPS, PROMPT = 64, 2, "a large red circle in the centre on a blue background"
SEEDS = (1, 2)  # X: columns
SAMPLERS = ("Euler", "DPM++ 2M")  # Y: rows
PLOT = "#txt2img_script_x_y_z_plot"


@pytest.fixture
def demo_studio(tmp_path):
    models = tmp_path / "Stable-diffusion"
    models.mkdir()  # empty: the studio serves its demo model
    for url in launch_studio(tmp_path, models):
        yield url, tmp_path


def _choose(page, dropdown: str, *options: str) -> None:
    """Pick each option (by its whole name) in a Gradio dropdown."""
    for option in options:
        page.locator(f"{dropdown} input").click()
        page.locator(dropdown).get_by_role("option", name=option, exact=True).click()
    page.locator(f"{dropdown} input").blur()


def _offered(page, dropdown: str) -> list[str]:
    page.locator(f"{dropdown} input").click()
    options = page.locator(dropdown).get_by_role("option")
    options.first.wait_for(timeout=30_000)
    names = [name.strip() for name in options.all_inner_texts()]
    page.locator(f"{dropdown} input").blur()
    return names


def _plain_job(url: str, seed: int, sampler: str) -> np.ndarray:
    """The picture a plain job with this seed and sampler makes (the API, the same service)."""
    body = {"prompt": PROMPT, "negative_prompt": "", "steps": STEPS, "cfg_scale": 7, "width": SIZE, "height": SIZE,
            "seed": seed, "sampler_name": sampler, "scheduler": "Automatic", "save_images": False}
    request = urllib.request.Request(urllib.parse.urljoin(url, "sdapi/v1/txt2img"), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        picture = json.loads(response.read())["images"][0]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(picture))).convert("RGB"))


@NEEDS_CHROMIUM
def test_an_xyz_plot_of_seeds_by_samplers_from_the_page(demo_studio):
    from playwright.sync_api import expect

    url, data_dir = demo_studio
    with _studio_page(url, "studio-demo.safetensors") as page:
        expect(page.locator(PLOT).first).to_be_hidden()  # Gradio 6 gives a group's id to two nested divs
        _choose(page, "#txt2img_script", "X/Y/Z plot")
        expect(page.locator(PLOT).first).to_be_visible(timeout=30_000)

        # Seed has no list: its values are typed.
        _choose(page, f"{PLOT}_x_type", "Seed")
        expect(page.locator(f"{PLOT}_x_values")).to_be_visible(timeout=30_000)
        expect(page.locator(f"{PLOT}_x_values_dropdown")).to_be_hidden()
        page.locator(f"{PLOT}_x_values textarea").fill(", ".join(map(str, SEEDS)))

        # Sampler has: the values dropdown shows and offers the samplers, the text box hides.
        _choose(page, f"{PLOT}_y_type", "Sampler")
        expect(page.locator(f"{PLOT}_y_values_dropdown")).to_be_visible(timeout=30_000)
        expect(page.locator(f"{PLOT}_y_values")).to_be_hidden()
        offered = _offered(page, f"{PLOT}_y_values_dropdown")
        assert set(SAMPLERS) | {"Euler a", "DDIM"} <= set(offered) and "Seed" not in offered, offered
        # "Use text inputs instead of dropdowns" swaps them, and back.
        page.locator(f"{PLOT}_csv_mode input").check()
        expect(page.locator(f"{PLOT}_y_values")).to_be_visible(timeout=30_000)
        expect(page.locator(f"{PLOT}_y_values_dropdown")).to_be_hidden()
        page.locator(f"{PLOT}_csv_mode input").uncheck()
        expect(page.locator(f"{PLOT}_y_values_dropdown")).to_be_visible(timeout=30_000)
        _choose(page, f"{PLOT}_y_values_dropdown", *SAMPLERS)
        for sampler in SAMPLERS:
            expect(page.locator(f"{PLOT}_y_values_dropdown")).to_contain_text(sampler)

        page.locator("#txt2img_prompt textarea").fill(PROMPT)
        page.locator("#txt2img_steps input[type=number]").fill(str(STEPS))
        page.locator("#txt2img_width input[type=number]").fill(str(SIZE))
        page.locator("#txt2img_height input[type=number]").fill(str(SIZE))
        page.locator("#txt2img_generate").click()
        info = page.locator("#txt2img_info")
        expect(info).to_contain_text("Script: X/Y/Z plot", timeout=300_000)
        expect(info).to_contain_text("X Type: Seed")
        expect(info).to_contain_text(f'Y Values: "{",".join(SAMPLERS)}"')
        gallery = page.locator("#txt2img_gallery img")
        expect(gallery).to_have_count(1)  # the grid alone (no sub images asked for)
        source = urllib.parse.urljoin(url, gallery.first.get_attribute("src"))
        grid = Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB")
        page.screenshot(path=str(data_dir / "xyz.png"), full_page=True)

    # Columns are the seeds, rows the samplers; labels on top and at the left (3/4 of a cell), no margin.
    left, top = SIZE * 3 // 4, grid.height - len(SAMPLERS) * SIZE
    assert grid.width == left + len(SEEDS) * SIZE and 0 < top < SIZE, grid.size
    cells = {}
    for row, sampler in enumerate(SAMPLERS):
        for col, seed in enumerate(SEEDS):
            x, y = left + col * SIZE, top + row * SIZE
            cells[seed, sampler] = np.asarray(grid.crop((x, y, x + SIZE, y + SIZE)))
            assert np.array_equal(cells[seed, sampler], _plain_job(url, seed, sampler)), (seed, sampler)
    assert not np.array_equal(cells[SEEDS[0], SAMPLERS[0]], cells[SEEDS[1], SAMPLERS[0]])  # the seeds differ
    assert not np.array_equal(cells[SEEDS[0], SAMPLERS[0]], cells[SEEDS[0], SAMPLERS[1]])  # so do the samplers
