"""The KaVa model: one backbone (teacher and student share its weights), the latent
projection and the special tokens (docs/algorithm.md §1–§2).

`build_kava_model` loads the backbone, adds `<bot>`, `<eot>`, `<latent>` (their embedding
rows are trained: through peft's `trainable_token_indices` under LoRA, or as part of the
full model otherwise), wraps it with LoRA from the config, and attaches the projection.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from kava.config import KavaConfig, uses_projection
from kava.data.sequences import SPECIAL_TOKENS, SequenceBuilder, SpecialIds
from kava.errors import KavaError
from kava.model.cache import LMOutput, backbone_kwargs
from kava.model.load import load_backbone


class LatentProjection(nn.Module):
    """Linear(d,d) → GELU → Linear(d,d) → LayerNorm(d), trained in full [pccot]. Runs in fp32.

    `gain` initialises the LayerNorm's weight (1 in PCCoT and CODI). The LayerNorm's output
    has RMS ≈ gain, while a small model's token embeddings may have RMS ≈ 0.02: with gain 1
    the fed-back latents then dominate their residual stream (`latent.projection_scale`).
    """

    def __init__(self, hidden_size: int, gain: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
            nn.LayerNorm(hidden_size),
        )
        with torch.no_grad():
            self.net[-1].weight.fill_(gain)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.float()).to(h.dtype)


@functools.lru_cache(maxsize=None)
def _fast_trainable_tokens_class():
    """A subclass of peft's TrainableTokensLayer that gives the same outputs without
    materialising the merged [vocabulary, d] weight at every call.

    peft builds `W = base.index_copy(0, rows, delta)` (a full copy of the embedding) for
    every embedding lookup and every lm-head call, and on the tied lm head its backward
    computes the gradient of that whole matrix ([V, d]: as many FLOPs as the head's
    forward) only to read the trainable rows. Here the base weight is used as it is and
    the trainable rows are put in afterwards: an embedding lookup takes the delta rows
    where the ids are trainable tokens; the lm head computes the logits with the base
    weight and overwrites the trainable tokens' columns with `x @ deltaᵀ`. Anything
    unusual (merged, disabled, max_norm, sparse, ...) falls back to peft's own code.
    `tests/test_perf_equivalence.py` checks outputs and gradients against peft's path.
    """
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    class FastTrainableTokensLayer(TrainableTokensLayer):
        def forward_adapters(self, x, active_adapters, *args, **kwargs):
            base = self.base_layer
            if self.disable_adapters or not active_adapters or self.merged or args or kwargs:
                return super().forward_adapters(x, active_adapters, *args, **kwargs)
            self._check_overlapping_tokens(active_adapters)
            rows = [i for a in active_adapters for i in self.token_indices[a]]
            key = (tuple(rows), base.weight.device)
            cached = self.__dict__.get("_kava_index")
            if cached is None or cached[0] != key:  # (no host-to-device copy per call)
                cached = self.__dict__["_kava_index"] = (key, torch.tensor(rows, device=base.weight.device))
            index = cached[1]
            delta = torch.cat([self.trainable_tokens_delta[a].to(base.weight) for a in active_adapters])
            if isinstance(base, nn.Embedding):
                if base.max_norm is not None or base.scale_grad_by_freq or base.sparse or base.padding_idx in rows:
                    return super().forward_adapters(x, active_adapters)
                out = torch.nn.functional.embedding(x, base.weight, padding_idx=base.padding_idx)
                match = x[..., None] == index  # [..., K]
                slot = match.long().argmax(-1)  # (no host sync: always taken, as peft's output always has a grad)
                out = torch.where(match.any(-1)[..., None], delta[slot], out)
                scale = self._get_embed_scale()
                return out * scale.to(out.dtype) if scale is not None else out
            if isinstance(base, nn.Linear) and base.bias is None:
                out = torch.nn.functional.linear(x, base.weight)
                return out.index_copy_(-1, index, torch.nn.functional.linear(x, delta))
            return super().forward_adapters(x, active_adapters)

    FastTrainableTokensLayer.__module__ = __name__  # picklable as kava.model.kava_model.FastTrainableTokensLayer
    return FastTrainableTokensLayer


def __getattr__(name: str):
    if name == "FastTrainableTokensLayer":
        return _fast_trainable_tokens_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def use_fast_trainable_tokens(backbone) -> int:
    """Switch peft's trainable-token layers inside `backbone` to the fast subclass; returns how many."""
    try:
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    except ImportError:
        return 0
    fast = _fast_trainable_tokens_class()
    n = 0
    for module in backbone.modules():
        if type(module) is TrainableTokensLayer:
            module.__class__ = fast
            n += 1
    return n


FIRST_INPUTS = ("bot_hidden", "latent_embedding")


class KavaModel(nn.Module):
    """The backbone, the special token ids, the latent projection and the latent settings.

    first_input: the first latent slot's input in every Jacobi iteration — "bot_hidden",
    proj(h⁰ at <bot>) from pass 0, as the official PCCoT and CODI code do (docs/algorithm.md §2), or
    "latent_embedding", the constant e(<latent>). latent_mode: "jacobi" (kava.model.student) or
    "sequential" (one latent per pass, kava.model.sequential).
    """

    def __init__(self, backbone, special: SpecialIds, num_latents: int, num_iterations: int, projection: bool,
                 first_input: str = "bot_hidden", projection_gain: float = 1.0, latent_mode: str = "jacobi"):
        super().__init__()
        if first_input not in FIRST_INPUTS:
            raise ValueError(f"first_input must be one of {FIRST_INPUTS}, got {first_input!r}")
        use_fast_trainable_tokens(backbone)
        self.backbone = backbone
        self.special = special
        self.num_latents = num_latents
        self.num_iterations = num_iterations
        self.first_input = first_input
        self.latent_mode = latent_mode
        hidden = backbone.config.get_text_config().hidden_size
        self.projection = LatentProjection(hidden, projection_gain) if projection else None

    @classmethod
    def from_config(cls, backbone, special: SpecialIds, cfg: KavaConfig) -> KavaModel:
        lat = cfg.latent
        gain = embedding_rms(backbone) if lat.projection_scale == "embedding_rms" else 1.0
        return cls(backbone, special, lat.num_latents, lat.num_iterations, uses_projection(cfg),
                   first_input=lat.first_input, projection_gain=gain, latent_mode=lat.mode)

    @property
    def config(self):
        return self.backbone.config

    @property
    def num_layers(self) -> int:
        return self.backbone.config.get_text_config().num_hidden_layers

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_input_embeddings()(input_ids)

    def latent_embeddings(self, batch_size: int) -> torch.Tensor:
        ids = torch.full((batch_size, 1), self.special.latent, device=self.device)
        return self.embed(ids)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.projection(h) if self.projection is not None else h

    @property
    def device(self) -> torch.device:
        # (not the input embedding's `.weight`: under peft's trainable tokens that property
        # builds the merged [vocabulary, d] matrix, 525 MB for Llama-3.2-1B, at every call)
        return next(self.backbone.parameters()).device

    def merge_lora(self) -> None:
        """For inference: fold the LoRA adapters (and the trained token rows) into the base
        weights (peft's `merge_and_unload`), so each projection is one matrix product again
        instead of three; no-op without LoRA. The model can no longer be trained or saved as
        an adapter."""
        if hasattr(self.backbone, "merge_and_unload"):
            self.backbone = self.backbone.merge_and_unload()

    def lm(self, **kwargs) -> LMOutput:
        """One call of the backbone: the single entry point for counting, hooks and the
        transformers-version differences (the cache goes in as `past_key_values=` and comes
        back as `.past_key_values`; `kava.model.cache` maps both to what the backbone uses)."""
        return LMOutput.of(self.backbone(**backbone_kwargs(self.backbone, kwargs)))


def embedding_rms(backbone) -> float:
    """Root mean square of the input embedding matrix's entries (the scale of a token's input)."""
    w = backbone.get_input_embeddings().weight.detach()
    return float(w.float().pow(2).mean().sqrt())


def add_special_tokens(model, tokenizer) -> SpecialIds:
    """Add `<bot>`, `<eot>`, `<latent>` (if missing) and initialise new rows to the mean embedding."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    ids = SpecialIds(*(tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS))
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(0, keepdim=True)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[old:] = out.weight[:old].mean(0, keepdim=True)
    return ids


def peft_model(model, peft_cfg):
    """peft's `get_peft_model`, without the FutureWarning transformers >= 5.24 raises when peft
    reads `is_gradient_checkpointing` (peft's call, not the user's concern; only that warning)."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, peft_cfg)


def apply_lora(model, cfg: KavaConfig, special: SpecialIds):
    from peft import LoraConfig

    lcfg = cfg.lora
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in lcfg.target_modules if t in present]
    if not targets:
        raise KavaError(
            f"lora.target_modules {lcfg.target_modules} match no module of {type(model).__name__}; "
            "list its linear layers' names (e.g. q_proj, v_proj)"
        )
    peft_cfg = LoraConfig(
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        target_modules=targets,
        trainable_token_indices=[special.bot, special.eot, special.latent],
        task_type="CAUSAL_LM",
    )
    return peft_model(model, peft_cfg)


def build_kava_model(cfg: KavaConfig, device: torch.device | str = "cpu", word_vocabulary=None):
    """(KavaModel, tokenizer, SequenceBuilder) ready to train, on `device`."""
    backbone, tok = load_backbone(cfg.model, device, word_vocabulary=word_vocabulary)
    special = add_special_tokens(backbone, tok)
    if cfg.lora.enabled:
        backbone = apply_lora(backbone, cfg, special)
    model = KavaModel.from_config(backbone, special, cfg)
    model.to(device)
    builder = SequenceBuilder(tok, cfg.prompt, special, drop_last_step=cfg.data.drop_last_step,
                              codi_position=cfg.kava.codi_position)
    return model, tok, builder


def trainable_parameters(model: KavaModel) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
