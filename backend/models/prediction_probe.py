"""Tell a v-prediction UNet from an epsilon one by one test forward pass, as A1111 does for SD2.

SD2.x 768-v files and SD2.x 512 (epsilon) files have the same keys and shapes;
without a sidecar .yaml only the weights' behaviour tells them apart. A1111
(modules/sd_models_config.py, `is_using_v_parameterization_for_sd2`) feeds the
UNet a constant latent x = 0.5 at the noisiest timestep, t = 999, with a
constant text context of 0.5 (two tokens), and calls the model v-prediction
when mean(unet(x) - x) < -1.

Why that separates them: at t = 999 the latent is almost pure noise
(sqrt(alphas_cumprod) is about 0.07), so an epsilon model's answer, the noise,
is about the latent itself and out - x stays near 0. A v model's target there,
v = alpha * eps - sigma * x0, is about -x0: a guess at the clean latent with
its sign flipped, not the input. The -1 threshold is A1111's; the test is
empirical, not a derivation, and only as good on a fine-tune as that keeps its
parent's behaviour at t = 999. A sidecar .yaml or a "v_pred" marker key, when a
file has one, decides instead (the loader runs the probe only without them).
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

TIMESTEP = 999  # the noisiest step of the 1000-step training schedule
VALUE = 0.5  # every element of the test latent and of the test context
SIZE = 8  # latent height and width: 64x64 pixels, one cheap forward
CONTEXT_TOKENS = 2
V_THRESHOLD = -1.0  # mean(out - x) below this: v-prediction


@torch.no_grad()
def probe_score(unet) -> float:
    """mean(unet(x, 999, context) - x) for the constant test input; the UNet is left as it was.

    For plain UNets (the latent in, the prediction out, no added conditioning): SD1/SD2-shaped, not
    inpainting (9 input channels) and not SDXL (time ids and pooled embeddings).
    """
    config = unet.config
    if config.in_channels != config.out_channels:
        raise ValueError(f"the prediction probe needs a plain UNet; this one takes {config.in_channels} channels "
                         f"and predicts {config.out_channels}")
    if config.addition_embed_type is not None or config.class_embed_type is not None:
        raise ValueError("the prediction probe does not supply added conditioning (SDXL time ids, class labels)")
    dtype, device = unet.dtype, unet.device
    # Half precision on the CPU is slow and may lack kernels; the test runs in fp32 there, as A1111's does.
    # fp16/bf16 -> fp32 -> back is exact, so the weights come back bit for bit.
    work = torch.float32 if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16) else dtype
    training = unet.training
    unet.eval()
    if work != dtype:
        unet.to(work)
    try:
        x = torch.full((1, config.in_channels, SIZE, SIZE), VALUE, dtype=work, device=device)
        context = torch.full((1, CONTEXT_TOKENS, config.cross_attention_dim), VALUE, dtype=work, device=device)
        timestep = torch.tensor([TIMESTEP], device=device)
        out = unet(x, timestep, encoder_hidden_states=context, return_dict=False)[0]
        score = (out.float() - x.float()).mean().item()
    finally:
        if work != dtype:
            unet.to(dtype)
        unet.train(training)
    log.debug("prediction probe: mean(unet(x, t=%d) - x) = %.4f (v-prediction below %.1f)",
              TIMESTEP, score, V_THRESHOLD)
    return score


def probe_v_prediction(unet) -> bool:
    """True when the UNet behaves like a v-prediction model on A1111's test input."""
    return probe_score(unet) < V_THRESHOLD
