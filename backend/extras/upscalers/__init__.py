"""The Extras upscaler engine: built-in resizes and spandrel models (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT...)
from the studio's model folders, run in blended tiles with A1111's sizes and names."""
from backend.extras.upscalers.errors import UpscaleError, UpscaleInterrupted
from backend.extras.upscalers.files import BUILTIN_UPSCALERS, UPSCALER_FOLDERS
from backend.extras.upscalers.library import UpscalerLibrary
from backend.extras.upscalers.sizes import MAX_UPSCALE_PIXELS, MAX_UPSCALE_SIDE, check_output_size, target_size

__all__ = [
    "BUILTIN_UPSCALERS", "MAX_UPSCALE_PIXELS", "MAX_UPSCALE_SIDE", "UPSCALER_FOLDERS", "UpscaleError",
    "UpscaleInterrupted", "UpscalerLibrary", "check_output_size", "target_size",
]
