"""Running an Extras job: its turn on the device, each picture processed, saved
to outputs/extras-images with the source's infotext kept and A1111's
"extras" entries added.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from PIL import Image

from backend.devices import is_out_of_memory, release_cached_memory
from backend.extras.library import ExtrasLibrary
from backend.extras.postprocess import ExtrasRequest, Processed, check_sizes, format_extras_info, process_image
from backend.extras.upscalers import UpscaleError, UpscaleInterrupted
from backend.generation.job import JobControl
from backend.generation.queue import InterruptedWhileQueued
from backend.images.infotext import read_infotext
from backend.images.saving import FilenameTags, save_image

_PROGRESS_STEPS = 100  # per picture: the tiles of its upscale map onto these


@dataclass
class ExtrasResult:
    images: list[Image.Image]
    infotexts: list[str]  # each picture's "extras" entries
    paths: list[Path] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def seeds(self) -> list[int]:  # the result widgets of the generation tabs show these; Extras has none
        return []

    @property
    def warnings(self) -> list[str]:
        return self.messages

    @property
    def html_info(self) -> str:
        """A1111's `html_info`: the first picture's entries, then any messages."""
        lines = [self.infotexts[0]] if self.infotexts and self.infotexts[0] else []
        lines += self.messages
        return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


class ExtrasService:
    def __init__(self, library: ExtrasLibrary, generation):
        self.library = library
        self.generation = generation  # its device queue, options and output folders are shared

    def run(self, request: ExtrasRequest, job: JobControl | None = None) -> ExtrasResult:
        job = job or JobControl()
        check_sizes(request)  # a 20000x20000 request is refused before its turn
        options = self.generation.options_store.options
        processed: list[Processed] = []
        interrupted = False

        def on_device():
            nonlocal interrupted
            job.begin(len(request.images), len(request.images) * _PROGRESS_STEPS)
            for index, image in enumerate(request.images):
                if job.interrupted:
                    interrupted = True
                    break
                job.begin_pass(index, _PROGRESS_STEPS, f"Image {index + 1} of {len(request.images)}")
                try:
                    processed.append(process_image(
                        image, request, self.library.upscalers, self.library.faces,
                        tile=options.ESRGAN_tile, tile_overlap=options.ESRGAN_tile_overlap,
                        progress=lambda done, total: job.advance(done * _PROGRESS_STEPS // max(total, 1)),
                        should_stop=lambda: job.interrupted))
                except UpscaleInterrupted:
                    interrupted = True
                    break
                finally:
                    job.end_pass()

        try:
            self.generation.queue.run(job, on_device)
        except InterruptedWhileQueued:
            return ExtrasResult(images=[], infotexts=[], interrupted=True)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            release_cached_memory()
            raise UpscaleError(f"out of memory on {self.generation.device_settings.device}: lower the upscaler "
                               "tile size in Settings (ESRGAN_tile) or the scale") from err
        finally:
            job.finish()
        infotexts = [format_extras_info(p.params) for p in processed]
        paths = []
        if request.save_images:
            paths = self._save(request, processed, infotexts, options)
        messages = list(dict.fromkeys(m for p in processed for m in p.messages))
        return ExtrasResult(images=[p.image for p in processed], infotexts=infotexts, paths=paths,
                            messages=messages, interrupted=interrupted)

    def _save(self, request: ExtrasRequest, processed: list[Processed], infotexts: list[str], options) -> list[Path]:
        directory = Path(request.output_dir) if request.output_dir else \
            self.generation.output_dir(options.outdir_extras_samples, options)
        paths = []
        for index, (out, extras) in enumerate(zip(processed, infotexts)):
            source = request.images[index]
            parameters = read_infotext(source) or ""
            name = Path(request.names[index]).stem if index < len(request.names) else ""
            tags = FilenameTags(prompt=name, width=out.image.width, height=out.image.height, when=datetime.now())
            paths.append(save_image(out.image, directory, infotext=parameters, extras_info=extras,
                                    fmt=options.samples_format, filename_pattern="[prompt_spaces]" if name else "",
                                    tags=tags, jpeg_quality=options.jpeg_quality))
        return paths
