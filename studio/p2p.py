"""Prompt-to-Prompt (Hertz et al., ICLR 2023): edit an image by editing its prompt.

The source prompt and the edited (target) prompt are denoised in one batch from the same starting latent. During a
window of steps, the edit's cross-attention maps are taken from the source (Sec. 3.2), so the layout the source
drew is kept while the new words change what is drawn there:

- replace: a word swapped for another (token counts may differ: a target token gets the mean of its source word's
  token maps), M_edit = M_src mapped through a token-to-token matrix;
- refine: words added, the tokens aligned with the source by a longest-common-subsequence aligner; aligned tokens
  take the source's map, new tokens keep their own;
- reweight: each token's map scaled by a per-word weight (alone, or on top of replace/refine).

Self-attention is injected too, early in the schedule (the source's Q and K are used for the edit's rows, which
gives exactly the source's self-attention map while the fast scaled-dot-product path stays in use). LocalBlend
(Sec. 3.3) keeps the edit to where the chosen words attend: after each step, edit latents outside that mask are
reset to the source's. Only cross-attention probabilities are materialised (77 keys); they are recorded per token,
step and resolution, averaged over heads and layers, for the attention explorer.

Only the conditional half of the classifier-free-guidance batch is edited, as in the paper's code.
"""

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.inversion import Inversion
from studio.jobs import Cancelled, PreviewFn, StepFn, StopFn
from studio.params import Params, choice, ranged
from studio.prompts import BREAK, escape, parse_prompt_attention, prompt_chunks
from studio.sampling import (check_prompt, decode_latents, guided, make_scheduler, pick_seed, seed_field, snap_size,
                             text_context, to_images)

EDITS = ("replace", "refine", "reweight")
WEIGHT_RANGE = (-1.0, 10.0)  # the paper's notebook turns "smiling" up 5x and "cloudy" up to 20x; -1 inverts a word
SELF_MAX_SIDE = 32  # self-attention is injected at resolutions up to 32x32, as the paper's code does for SD
BLEND_LEVELS = (1, 2, 4, 8)  # attention resolutions as divisors of the latent side: 64, 32, 16, 8 for SD at 512
BLEND_START = 0.2  # LocalBlend starts after this fraction of the steps (the paper's code), once a layout exists
N_TOKENS = 77


@dataclass
class P2PParams(Params):
    """One edit. Paper and diffusers names: `cross_start`/`cross_end` are the window the paper's code calls
    `cross_replace_steps` (a fraction, or per word: `word_windows`); `self_end` is `self_replace_steps`; `weights` is
    the equalizer of `get_equalizer` (reweighting, Sec. 3.2); `blend_words` are LocalBlend's words (Sec. 3.3)."""

    source_prompt: str
    target_prompt: str = ""
    edit: str = choice("replace", EDITS)
    weights: dict[str, float] = field(default_factory=dict)  # word -> attention scale, in WEIGHT_RANGE
    cross_start: float = ranged(0.0, 0, 1, 0.05, "Cross-attention injection starts at this fraction of the steps.")
    cross_end: float = ranged(0.8, 0, 1, 0.05, "…and ends here. Later steps let the new words refine details.")
    word_windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # word -> its own (start, end)
    self_end: float = ranged(0.4, 0, 1, 0.05, "Self-attention injection (keeps shapes) ends at this fraction.")
    blend_words: list[str] = field(default_factory=list)
    # Which attention resolutions the LocalBlend mask averages, as divisors of the latent side (BLEND_LEVELS). Empty:
    # the paper's choice, the coarsest resolution of the UNet's down/up blocks (16x16 for SD at 512).
    blend_levels: list[int] = field(default_factory=list)
    blend_threshold: float = ranged(0.3, 0.05, 0.95, 0.05, "LocalBlend: where a blend word's map exceeds this share "
                                                            "of its maximum, the edit may change the image.")
    steps: int = ranged(50, 5, 150, 1, "DDIM steps.")
    cfg: float = ranged(7.5, 0, 20, 0.5, "Classifier-free guidance. Lower (about 3) keeps more of the "
                                         "source's layout in a word swap.")
    seed: int = seed_field(0)
    negative_prompt: str = ""
    width: int = 0  # 0: the model's native size
    height: int = 0

    def check(self) -> None:
        if not self.source_prompt.strip():
            raise ValueError("Write the source prompt (what the image shows).")
        if self.edit == "reweight" and not self.weights:
            raise ValueError("Reweight needs at least one word with a weight other than 1.")
        if self.edit != "reweight" and not self.target_prompt.strip():
            raise ValueError("Write the target prompt (the source prompt with your edit).")
        lo, hi = WEIGHT_RANGE
        for word, weight in self.weights.items():
            if not lo <= weight <= hi:
                raise ValueError(f"The weight of “{word}” must be between {lo:g} and {hi:g}, got {weight:g}.")
        for name, (start, end) in {"cross-attention": (self.cross_start, self.cross_end),
                                   **self.word_windows}.items():
            if not 0 <= start <= end <= 1:
                raise ValueError(f"The {name} window needs 0 ≤ start ≤ end ≤ 1 (got {start:g}–{end:g}).")
        if not set(self.blend_levels) <= set(BLEND_LEVELS):
            raise ValueError("LocalBlend averages attention maps at 1/1, 1/2, 1/4 or 1/8 of the latent side "
                             f"(levels {', '.join(map(str, BLEND_LEVELS))}), not {self.blend_levels}.")
        for name in ("width", "height"):
            if getattr(self, name) and not 64 <= getattr(self, name) <= 2048:
                raise ValueError(f"{name} must be 0 (the model's size) or between 64 and 2048, got "
                                 f"{getattr(self, name)}")


# --- Token bookkeeping ---------------------------------------------------------------------------------------------


def word_weights(prompt: str) -> tuple[str, dict[str, float]]:
    """The prompt as Prompt-to-Prompt aligns it, A1111's syntax (weights, BREAK) taken out, and the weight
    that syntax gives each word where it is not 1: "a (red:1.5) car" → ("a red car", {"red": 1.5}). A word weighted
    in part takes the weight of that part; a repeated word, that of its first occurrence."""
    text, weight_at = "", []
    for part, weight in parse_prompt_attention(prompt):
        part, weight = (" ", 1.0) if part == BREAK else (part, weight)
        text += part
        weight_at += [weight] * len(part)
    weights: dict[str, float] = {}
    for word in re.finditer(r"\S+", text):
        weight = next((w for w in weight_at[word.start() : word.end()] if w != 1), 1.0)
        if weight != 1:
            weights.setdefault(word[0], round(weight, 3))  # 1.21, not 1.2100000000000002
    return text, weights


def word_tokens(tokenizer, prompt: str) -> list[list[int]]:
    """For each whitespace-separated word, the positions of its tokens in the encoded prompt (BOS is 0)."""
    spans, position = [], 1
    for word in prompt.split():
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        spans.append([p for p in range(position, position + n) if p < N_TOKENS - 1])
        position += n
    return spans


def token_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, padding="max_length", max_length=N_TOKENS, truncation=True).input_ids


def replace_mapper(tokenizer, source: str, target: str) -> torch.Tensor:
    """(77, 77) matrix: the edit's map for target token j is Σ_i M[i, j] · source map i."""
    ws, wt = word_tokens(tokenizer, source), word_tokens(tokenizer, target)
    if len(ws) != len(wt):
        raise ValueError(f"Replace swaps words one for one, but the prompts have {len(ws)} and {len(wt)} words. "
                         "Use Refine to add words.")
    mapper = torch.zeros(N_TOKENS, N_TOKENS)
    mapper[0, 0] = 1
    for a, b in zip(ws, wt):
        if not a or not b:
            continue
        if len(a) == len(b):
            mapper[a, b] = 1
        else:
            mapper[torch.tensor(a)[:, None], torch.tensor(b)[None]] = 1 / len(a)
    # EOS and padding, in order after the last word
    end_s = (ws[-1][-1] + 1) if ws and ws[-1] else 1
    end_t = (wt[-1][-1] + 1) if wt and wt[-1] else 1
    for i, j in zip(range(end_s, N_TOKENS), range(end_t, N_TOKENS)):
        mapper[i, j] = 1
    return mapper


def refine_mapper(tokenizer, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Align the token sequences (longest common subsequence). Returns, per target token, the source token it is
    aligned with (or 0) and 1/0 for aligned/new."""
    s, t = token_ids(tokenizer, source), token_ids(tokenizer, target)
    n, m = len(s), len(t)
    lcs = np.zeros((n + 1, m + 1), dtype=np.int32)
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            lcs[i, j] = lcs[i + 1, j + 1] + 1 if s[i] == t[j] else max(lcs[i + 1, j], lcs[i, j + 1])
    mapper, alphas = torch.zeros(m, dtype=torch.long), torch.zeros(m)
    i = j = 0
    while i < n and j < m:
        if s[i] == t[j]:
            mapper[j], alphas[j] = i, 1
            i, j = i + 1, j + 1
        elif lcs[i + 1, j] >= lcs[i, j + 1]:
            i += 1
        else:
            j += 1
    return mapper, alphas


def word_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Token positions of every occurrence of `word` (case-insensitive, punctuation ignored) in `prompt`."""
    clean = word.strip().lower().strip(".,;:!?")
    return [p for w, span in zip(prompt.split(), word_tokens(tokenizer, prompt)) if w.lower().strip(".,;:!?") == clean
            for p in span]


def window(start: float, end: float, steps: int) -> torch.Tensor:
    """1 for the steps in [start, end) as fractions of the schedule (P2PParams checked that 0 ≤ start ≤ end ≤ 1)."""
    index = torch.arange(steps)
    return ((index >= int(start * steps)) & (index < int(end * steps))).float()


# --- The controller and its attention processor --------------------------------------------------------------------


class AttentionMaps:
    """Cross-attention per (step, side): a (2, h, w, T) tensor (source, edit), averaged over heads and layers, for
    the first T tokens (the prompts' real tokens). Summed on the device while the edit runs (no transfer inside the
    loop), then brought to the CPU in one copy by `finish`, in fp16: a few MB for SD at 512."""

    def __init__(self, n_tokens: int):
        self.n_tokens = n_tokens
        self._sum: dict[tuple[int, int], torch.Tensor] = {}
        self._count: dict[tuple[int, int], int] = {}
        self._mean: dict[tuple[int, int], torch.Tensor] = {}

    def add(self, step: int, side: int, maps: torch.Tensor) -> None:
        key = (step, side)
        value = maps.detach().float()
        self._sum[key] = self._sum[key] + value if key in self._sum else value
        self._count[key] = self._count.get(key, 0) + 1

    def finish(self) -> None:
        """Every map's mean, as one fp16 transfer to the CPU."""
        keys = list(self._sum)
        if not keys:
            return
        means = [(self._sum[k] / self._count[k]).half() for k in keys]
        host = torch.cat([m.flatten() for m in means]).cpu()
        for key, part, mean in zip(keys, host.split([m.numel() for m in means]), means):
            self._mean[key] = part.view(mean.shape)
        self._sum.clear()

    def get(self, step: int, side: int) -> torch.Tensor:
        return self._mean[step, side]

    @property
    def steps(self) -> list[int]:
        return sorted({s for s, _ in self._count})

    @property
    def sides(self) -> list[int]:
        return sorted({side for _, side in self._count})

    def token_map(self, prompt: int, token: int, steps: list[int] | None = None,
                  sides: list[int] | None = None) -> np.ndarray:
        """One token's map, averaged over `steps` and `sides` (all by default), at the largest side, in [0, 1]."""
        steps, sides = steps or self.steps, sides or self.sides
        out_side = max(sides)
        total = torch.zeros(out_side, out_side)
        for step in steps:
            for side in sides:
                m = self.get(step, side)[prompt, ..., token].float()
                total += F.interpolate(m[None, None], size=(out_side, out_side), mode="bilinear")[0, 0]
        total /= total.max().clamp(min=1e-8)
        return total.numpy()


class Controller:
    """Decides, per step and attention call, how the edit's attention is made from the source's."""

    def __init__(self, params: P2PParams, tokenizer, latent_hw: tuple[int, int], use_cfg: bool,
                 coarsest_level: int):
        steps = params.steps
        self.step, self.use_cfg, self.latent_hw = 0, use_cfg, latent_hw
        src, tgt = params.source_prompt, params.target_prompt
        self.edit = params.edit
        if self.edit == "replace":
            self.mapper = replace_mapper(tokenizer, src, tgt)
        elif self.edit == "refine":
            self.mapper, self.alphas = refine_mapper(tokenizer, src, tgt)
        # cross_alpha[step, token]: 1 where the edit takes the (mapped) source map
        base = window(params.cross_start, params.cross_end, steps)
        self.cross_alpha = base[:, None].repeat(1, N_TOKENS)
        for word, (start, end) in params.word_windows.items():
            positions = word_positions(tokenizer, tgt, word)
            if not positions:
                raise ValueError(f"“{word}” is not a word of the target prompt.")
            self.cross_alpha[:, positions] = window(start, end, steps)[:, None]
        self.self_steps = int(params.self_end * steps)
        self.equalizer = torch.ones(N_TOKENS)
        for word, weight in params.weights.items():
            positions = word_positions(tokenizer, tgt, word)
            if not positions:
                raise ValueError(f"“{word}” is not a word of the target prompt, so it cannot be reweighted.")
            self.equalizer[positions] = weight
        # LocalBlend: which tokens of each prompt define the editable region
        self.blend = torch.zeros(2, N_TOKENS)
        for word in params.blend_words:
            found_s, found_t = word_positions(tokenizer, src, word), word_positions(tokenizer, tgt, word)
            if not found_s and not found_t:
                raise ValueError(f"LocalBlend word “{word}” is in neither prompt: change or clear the LocalBlend "
                                 "words.")
            self.blend[0, found_s] = 1
            self.blend[1, found_t] = 1
        self.blending = bool(params.blend_words)  # known now, so no attention call asks the tensor
        self.blend_from = int(BLEND_START * steps)
        self.blend_threshold = params.blend_threshold
        self.blend_sides = {max(1, latent_hw[0] // level) for level in params.blend_levels or [coarsest_level]}
        n_real = max(len(tokenizer(p).input_ids) for p in (src, tgt))
        self.maps = AttentionMaps(min(n_real, N_TOKENS))
        self._blend_sum: torch.Tensor | None = None
        self._blend_count = 0
        self.blend_mask: torch.Tensor | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> "Controller":
        """The edit's matrices on the device, once: the attention calls then copy nothing to or from the host."""
        float_of = {"equalizer": dtype, "cross_alpha": dtype, "blend": dtype, "alphas": dtype,
                    "mapper": dtype if self.edit == "replace" else torch.long}
        for name, kind in float_of.items():
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).to(device, kind))
        return self

    def side(self, n: int) -> tuple[int, int]:
        """The (h, w) of an attention call with n query tokens, for any latent aspect ratio."""
        h, w = self.latent_hw
        factor = math.sqrt(h * w / n)
        return round(h / factor), round(w / factor)

    def rows(self) -> tuple[int, int]:
        """Batch rows of the conditional source and edit: [u_src, u_edit, c_src, c_edit] with CFG."""
        return (2, 3) if self.use_cfg else (0, 1)

    def cross(self, probs: torch.Tensor) -> torch.Tensor:
        """probs: (batch, heads, N, 77). Returns them with the edit's conditional row rewritten."""
        s, e = self.rows()
        source, edit = probs[s], probs[e]
        if self.edit == "replace":
            mapped = torch.einsum("hni,ij->hnj", source, self.mapper)
        elif self.edit == "refine":
            mapped = source[..., self.mapper] * self.alphas + edit * (1 - self.alphas)
        else:
            mapped = source
        mapped = mapped * self.equalizer
        alpha = self.cross_alpha[self.step]
        probs = probs.clone()
        probs[e] = mapped * alpha + edit * (1 - alpha)
        self._record(probs[[s, e]])
        return probs

    def _record(self, cond: torch.Tensor) -> None:
        h, w = self.side(cond.shape[2])
        maps = cond.mean(1).reshape(2, h, w, N_TOKENS)
        self.maps.add(self.step, h, maps[..., : self.maps.n_tokens])
        if self.blending and h in self.blend_sides:
            # (2, h, w) sum of the blend words' maps, brought to the latent size and averaged over layers
            words = (maps * self.blend[:, None, None]).sum(-1)
            words = F.interpolate(words[:, None].float(), size=self.latent_hw, mode="bilinear")
            # Widen the region a little, as the paper's 3x3 max-pool of 16x16 maps does at 512: 1/16 of the side.
            k = max(1, max(self.latent_hw) // 16)
            words = F.max_pool2d(words, 2 * k + 1, stride=1, padding=k)
            self._blend_sum = words if self._blend_sum is None else self._blend_sum + words
            self._blend_count += 1

    def self_rows(self, query: torch.Tensor, key: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Early on, the edit's self-attention uses the source's Q and K: the same attention map, the edit's V."""
        if self.step >= self.self_steps or side > SELF_MAX_SIDE:
            return query, key
        s, e = self.rows()
        query, key = query.clone(), key.clone()
        query[e], key[e] = query[s], key[s]
        return query, key

    def end_step(self, latents: torch.Tensor) -> torch.Tensor:
        """LocalBlend after a step: outside the words' region, the edit's latent is the source's."""
        if self._blend_sum is not None:
            maps = self._blend_sum / self._blend_count
            maps = maps / maps.flatten(1).max(1).values.clamp(min=1e-8).view(-1, 1, 1, 1)
            self.blend_mask = (maps > self.blend_threshold).any(0, keepdim=True).to(latents.dtype)
            if self.step >= self.blend_from:
                latents = latents.clone()
                latents[1:] = latents[:1] + self.blend_mask * (latents[1:] - latents[:1])
        self._blend_sum, self._blend_count = None, 0
        self.step += 1
        return latents


class P2PAttnProcessor:
    """A diffusers attention processor that lets the controller rewrite the edit's attention. Under a compiled UNet
    it runs eagerly (`torch.compiler.disable`): the controller's step counter and maps are Python state that would
    make the compiler specialise, and recompile, at every step."""

    def __init__(self, controller: Controller):
        self.controller = controller

    def self_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The fast kernel: self-attention injection swaps Q and K, so its probabilities are never materialised."""
        return F.scaled_dot_product_attention(query, key, value)

    @torch.compiler.disable
    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **_) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        b, n, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(b, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if is_cross:
            probs = (query @ key.transpose(-1, -2) * attn.scale).float().softmax(-1).to(query.dtype)
            out = self.controller.cross(probs) @ value
        else:
            query, key = self.controller.self_rows(query, key, max(self.controller.side(n)))
            out = self.self_attention(query, key, value)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, attn.heads * head_dim)))
        if spatial:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# --- Running an edit -----------------------------------------------------------------------------------------------


@dataclass
class P2PResult:
    source: Image.Image
    edited: Image.Image
    maps: AttentionMaps
    source_tokens: list[str]  # token strings of the first maps.n_tokens positions, for labels
    target_tokens: list[str]
    blend_mask: Image.Image | None
    seed: int
    warnings: list[str]


def coarsest_level(unet) -> int:
    """The latent divisor of the UNet's coarsest down-block cross-attention: 4 for SD (16x16 at 512), 2 for Shapes."""
    blocks = [i for i, kind in enumerate(unet.config.down_block_types) if "CrossAttn" in kind]
    return 2 ** max(blocks, default=0)


def token_strings(tokenizer, prompt: str, n: int) -> list[str]:
    ids = token_ids(tokenizer, prompt)[:n]
    return [tokenizer.decode([i]).strip() or "·" for i in ids]


@torch.no_grad()
def run_p2p(pipe: StableDiffusionPipeline, params: P2PParams, *, inversion: Inversion | None = None,
            on_step: StepFn | None = None, should_stop: StopFn | None = None,
            on_preview: PreviewFn | None = None) -> P2PResult:
    """Generate the source and the edit in one batch. `pipe` comes from `ModelManager.lend` (the processors are
    swapped on the shared UNet and always put back). With `inversion`, the source is that real image: the walk
    starts from its x_T and uses its optimised null-text embedding at each step."""
    if inversion is not None and (inversion.prompt, inversion.steps, inversion.cfg) != (
            params.source_prompt, params.steps, params.cfg):
        raise ValueError("The source prompt, steps and guidance must be those the image was inverted with; "
                         "invert it again after changing them.")
    if params.edit == "reweight" and not params.target_prompt.strip():
        params = replace(params, target_prompt=params.source_prompt)
    warnings: list[str] = []
    # A1111's weights stand for the paper's reweighting here: both prompts are aligned and encoded without the syntax,
    # in one chunk (the maps hold 77 tokens), and the edited prompt's weights are the equalizer's, given as `weights`
    # (the tab's sliders start from them).
    (source, source_weights), (target, target_weights) = map(word_weights, (params.source_prompt,
                                                                            params.target_prompt))
    if inversion is not None and (prompt_chunks(pipe.tokenizer, params.source_prompt)
                                  != prompt_chunks(pipe.tokenizer, escape(source), chunks=False)):
        raise ValueError("The real image was inverted under its source prompt as written, but Prompt-to-Prompt draws "
                         "the source from its plain words in one chunk: write the source prompt without weights, "
                         "BREAK or more than 75 tokens.")
    for text in dict.fromkeys((params.source_prompt, params.target_prompt, params.negative_prompt)):
        if warning := check_prompt(pipe.tokenizer, text):
            warnings.append(warning)
    if source_weights and params.source_prompt != params.target_prompt:
        warnings.append("The source prompt's weights are not used: Prompt-to-Prompt reweights the words of the "
                        "edited prompt (the word weights).")
    for word, weight in target_weights.items():
        given = params.weights.get(word, 1)
        if not math.isclose(given, weight, abs_tol=0.05):  # half the sliders' step
            warnings.append(f"“{word}” is weighted {weight:g} in the edited prompt and {given:g} in the word weights; "
                            "Prompt-to-Prompt uses the word weights.")
    params = replace(params, source_prompt=source, target_prompt=target)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = snap_size(params.width or native, "width", warnings)
    height = snap_size(params.height or native, "height", warnings)
    seed = pick_seed(params.seed)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    use_cfg = params.cfg > 1
    prompts = [params.source_prompt, params.target_prompt]
    context, cond = text_context(pipe, [escape(p) for p in prompts], [params.negative_prompt] * 2 if use_cfg else None,
                                 use_cfg, chunks=False)

    scheduler = make_scheduler("DDIM", pipe.scheduler.config)
    scheduler.set_timesteps(params.steps, device=device)
    f = pipe.vae_scale_factor
    if inversion is not None:
        latents = inversion.x_T.to(device, dtype).repeat(2, 1, 1, 1)
        height, width = latents.shape[2] * f, latents.shape[3] * f
    else:
        shape = (1, pipe.unet.config.in_channels, height // f, width // f)
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
        latents = (noise * scheduler.init_noise_sigma).to(device, dtype).repeat(2, 1, 1, 1)  # one start for both

    controller = Controller(params, pipe.tokenizer, (height // f, width // f), use_cfg,
                            coarsest_level(pipe.unet)).to(device, dtype)
    saved = pipe.unet.attn_processors
    try:
        pipe.unet.set_attn_processor(P2PAttnProcessor(controller))
        for i, t in enumerate(scheduler.timesteps):
            if should_stop and should_stop():
                raise Cancelled("Prompt-to-Prompt cancelled")
            model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if use_cfg else latents, t)
            if inversion is not None and use_cfg:
                context = torch.cat([inversion.null_embeddings[i].to(device, dtype).expand(2, -1, -1), cond])
            eps = pipe.unet(model_in, t, encoder_hidden_states=context).sample
            if use_cfg:
                eps = guided(*eps.chunk(2), params.cfg)
            out = scheduler.step(eps, t, latents)
            latents = controller.end_step(out.prev_sample)
            if on_step:
                on_step(i + 1, params.steps)
            if on_preview:
                on_preview(i + 1, params.steps, out.pred_original_sample)  # the source and the edit
    finally:
        pipe.unet.set_attn_processor(saved)
    controller.maps.finish()
    source, edited = to_images(decode_latents(pipe, latents))
    mask = None
    if params.blend_words and controller.blend_mask is None:
        sides = " and ".join(f"{side}×{side}" for side in controller.maps.sides)
        warnings.append(f"LocalBlend was off: this model has no cross-attention at the resolutions picked; its maps "
                        f"are {sides}.")
    if controller.blend_mask is not None:
        m = controller.blend_mask[0, 0].float().cpu().numpy()
        mask = Image.fromarray((m * 255).astype(np.uint8)).resize((width, height), Image.NEAREST)
    n = controller.maps.n_tokens
    return P2PResult(source, edited, controller.maps, token_strings(pipe.tokenizer, prompts[0], n),
                     token_strings(pipe.tokenizer, prompts[1], n), mask, seed, warnings)
