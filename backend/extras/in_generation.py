"""What txt2img and img2img borrow from Extras: model upscalers for hires. fix
and "Restore faces" after each picture, with the user's settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image

from backend.extras.library import ExtrasLibrary
from backend.extras.upscalers import UpscaleError, UpscaleInterrupted
from backend.generation.hires import PIXEL_FILTERS
from backend.settings import OptionsStore


@dataclass
class GenerationExtras:
    library: ExtrasLibrary
    options_store: OptionsStore

    @property
    def face_restorer(self) -> str:
        return self.options_store.options.face_restoration_model

    def check_upscaler(self, name: str) -> None:
        """Refuse an unknown hires. fix upscaler before any sampling."""
        if name in PIXEL_FILTERS:
            return
        if name == "None":
            raise UpscaleError("hires. fix needs an upscaler: a latent mode, Lanczos, Nearest or a model")
        self.library.upscalers.model_scale(name)  # an unknown or unusable file says why, and what there is

    def check_face_restorer(self) -> None:
        """"Restore faces" without the model file fails before sampling, with the file and folder named."""
        self.library.faces.check_ready(self.face_restorer)

    def upscale(self, images: list[Image.Image], size: tuple[int, int], name: str,
                should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
        if name in PIXEL_FILTERS:
            return [image.resize(size, resample=PIXEL_FILTERS[name]) for image in images]
        options = self.options_store.options
        try:
            return [self.library.upscalers.upscale(image, name, size=size, tile=options.ESRGAN_tile,
                                                   tile_overlap=options.ESRGAN_tile_overlap, should_stop=should_stop)
                    for image in images]
        except UpscaleInterrupted:  # the job stops at the next step anyway; finish this pass cheaply
            return [image.resize(size, resample=PIXEL_FILTERS["Lanczos"]) for image in images]

    def restore_faces(self, image: Image.Image) -> Image.Image:
        result = self.library.faces.restore(image, self.face_restorer,
                                            codeformer_weight=self.options_store.options.code_former_weight)
        return result.image if result.faces else image

