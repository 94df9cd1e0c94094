"""What the img2img tab hands the backend from each sub-tab's widgets (no browser needed)."""
from __future__ import annotations

import pytest
from PIL import Image

from ui.img2img import _picture_and_mask, painted_mask


def test_painted_layers_become_a_white_on_black_mask_of_the_picture_size():
    layer = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (5, 5, 15, 15))
    other = Image.new("RGBA", (100, 80), (0, 0, 0, 0))  # a layer at another scale is stretched
    other.paste((10, 200, 10, 255), (80, 60, 100, 80))
    mask = painted_mask([layer, None, other], (100, 80))
    assert mask.mode == "L" and mask.size == (100, 80)
    assert mask.getpixel((20, 20)) == 255 and mask.getpixel((90, 70)) == 255 and mask.getpixel((50, 40)) == 0


def test_each_sub_tab_gives_its_own_picture_and_mask():
    rgba = Image.new("RGBA", (32, 32), (200, 0, 0, 255))
    painted = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (0, 0, 8, 8))
    editor = {"background": rgba, "layers": [painted], "composite": rgba}
    picture, mask = _picture_and_mask("inpaint", None, None, editor, None, None, None)
    assert picture.mode == "RGB" and mask.getpixel((2, 2)) == 255 and mask.getpixel((20, 20)) == 0
    picture, mask = _picture_and_mask("sketch", None, editor, None, None, None, None)
    assert mask is None and picture.getpixel((20, 20)) == (200, 0, 0)
    upload_mask = Image.new("L", (16, 16), 255)
    picture, mask = _picture_and_mask("inpaint_upload", None, None, None, rgba, upload_mask, None)
    assert mask.size == (32, 32)
    with pytest.raises(ValueError, match="drop an image"):
        _picture_and_mask("img2img", None, None, None, None, None, None)
    with pytest.raises(ValueError, match="mask"):
        _picture_and_mask("inpaint_upload", None, None, None, rgba, None, None)
