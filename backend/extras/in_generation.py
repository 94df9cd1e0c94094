"""What txt2img and img2img borrow from Extras: model upscalers for hires. fix
and "Restore faces" after each picture, with the user's settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from PIL import Image

from backend.extras.library import ExtrasLibrary
from backend.extras.upscalers import UpscaleError, UpscaleInterrupted
from backend.generation.hires import PIXEL_FILTERS
from backend.settings import OptionsStore

if TYPE_CHECKING:
    from backend.generation.request import GenerationRequest


@dataclass
class GenerationExtras:
    library: ExtrasLibrary
    options_store: OptionsStore

    def face_restorer(self, request: GenerationRequest | None = None) -> str:
        """The request's face_restoration_model (override_settings), else the setting."""
        chosen = getattr(request, "face_restoration_model", None)
        return chosen or self.options_store.options.face_restoration_model

    def code_former_weight(self, request: GenerationRequest | None = None) -> float:
        chosen = getattr(request, "code_former_weight", None)
        return self.options_store.options.code_former_weight if chosen is None else chosen

    def check_upscaler(self, name: str) -> None:
        """Refuse an unknown hires. fix upscaler before any sampling."""
        if name in PIXEL_FILTERS:
            return
        if name == "None":
            raise UpscaleError("hires. fix needs an upscaler: a latent mode, Lanczos, Nearest or a model")
        self.library.upscalers.model_scale(name)  # an unknown or unusable file says why, and what there is

    def check_face_restorer(self, request: GenerationRequest | None = None) -> None:
        """"Restore faces" without the model file fails before sampling, with the file and folder named."""
        self.library.faces.check_ready(self.face_restorer(request))

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

    def restore_faces(self, image: Image.Image, request: GenerationRequest | None = None) -> Image.Image:
        result = self.library.faces.restore(image, self.face_restorer(request),
                                            codeformer_weight=self.code_former_weight(request))
        return result.image if result.faces else image

