"""Stable Diffusion's safety checker, on the images the studio decodes itself.

diffusers' pipelines run the checker only on the images they decode; the studio decodes latents itself (one VAE
guard, previews, its own loops), so the checker would never run. On a public or classroom studio the model manager
marks every lent pipeline to be screened, and `decode_latents` passes each batch through `screened`: an image the
checker flags is replaced by a plain grey notice, and the pipeline counts it for the job's message. A model without
a checker (Shapes, the tiny model, a single file loaded offline) is not screened.
"""

import numpy as np
import torch
from PIL import Image

NOTICE = 0.5  # the grey a withheld image becomes


def screened(pipe: object, pixels: torch.Tensor) -> torch.Tensor:
    """`pixels` (NCHW in [0, 1]) with every image the pipeline's safety checker flags replaced by grey."""
    checker, extractor = getattr(pipe, "safety_checker", None), getattr(pipe, "feature_extractor", None)
    if checker is None or extractor is None:
        return pixels
    arrays = pixels.permute(0, 2, 3, 1).float().cpu().numpy()
    images = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]
    clip_input = extractor(images, return_tensors="pt").pixel_values.to(checker.device, checker.dtype)
    with torch.no_grad():
        _, flagged = checker(images=arrays, clip_input=clip_input)
    pixels = pixels.clone()
    for i, bad in enumerate(flagged):
        if bad:
            pixels[i] = NOTICE
            pipe.withheld = getattr(pipe, "withheld", 0) + 1
    return pixels
