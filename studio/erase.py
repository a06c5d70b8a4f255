"""Erasing a concept from the model's weights (Gandikota et al., ICCV 2023, "Erasing Concepts from Diffusion Models",
ESD).

Eq. 6 of the paper: fine-tune θ so that, for the concept prompt c, it predicts what the frozen model θ* predicts
when guided *away* from c by negative guidance η,

    ε_θ(x_t, c, t)  ←  ε_θ*(x_t, t) − η · (ε_θ*(x_t, c, t) − ε_θ*(x_t, t)).

ESD-x trains only the cross-attention weights (the ones that read the prompt), which keeps the erasure specific to
the words of c; ESD-u trains the rest and erases more broadly. Here ESD-x is a LoRA on the shared UNet's
cross-attention (target "cross"); the frozen model θ* is the same UNet with the adapter off, so the result is a
library LoRA the user switches on in any tab, at any scale. The target is a fixed linear combination of the model's
outputs whose weights sum to one, so it holds as well for a v-prediction model (the Shapes family) as for ε.

One departure, for the CPU: the paper draws x_t by partially denoising with θ itself, from noise, at every step.
Here x_t noises images the frozen model drew for c (the trainer's cached class images): the same states at large t,
where the layout and the shape are decided, for one UNet call instead of up to fifty.
"""

from typing import Any

import torch


def esd_target(unet: Any, noisy: torch.Tensor, t: torch.Tensor, concept: torch.Tensor, empty: torch.Tensor,
               eta: float) -> torch.Tensor:
    """The right-hand side of Eq. 6 from the frozen model (call it with the job's adapter off)."""
    with torch.no_grad():
        both = unet(torch.cat([noisy, noisy]), torch.cat([t, t]), encoder_hidden_states=torch.cat([empty, concept])
                    ).sample
    unconditional, conditional = both.chunk(2)
    return unconditional - eta * (conditional - unconditional)
