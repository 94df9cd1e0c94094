"""IP-Adapter: image prompts through diffusers' IP-Adapter attention processors.

    library = IpAdapterLibrary([models/ipadapter, models/ControlNet], [models/clip_vision])
    with device_lock:
        attached = library.attach(derived_pipe, [IpAdapterUse("ip-adapter_sd15", [image], weight=0.8)])
        try:
            pipe(..., **attached.pipeline_kwargs(do_cfg, batch), callback_on_step_end=...)  # apply_step(...)
        finally:
            attached.restore()
"""
from backend.control.ip_adapter.attach import AttachedAdapters
from backend.control.ip_adapter.library import IpAdapterLibrary
from backend.control.ip_adapter.types import EncoderInfo, IpAdapterError, IpAdapterInfo, IpAdapterUse

__all__ = ["AttachedAdapters", "EncoderInfo", "IpAdapterError", "IpAdapterInfo", "IpAdapterLibrary", "IpAdapterUse"]
