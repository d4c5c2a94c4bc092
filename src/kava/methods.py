"""Each method of docs/methods.md as the config overrides that make a KaVa config that method.

One place for what a method is: `kava bench quality` builds its runs from these (adding only
the benchmark's own settings: its curriculum's start stage and stage lengths, iCoT's removal
length for its task), and tests/test_methods.py checks that each shipped config of a method
(`configs/codi_llama1b_aug.yaml`, ...) already holds them. KaVa is the config as it is; the
others switch parts of it off or on (docs/methods.md has the reasons and the sources).
"""

from __future__ import annotations

# Coconut's and CODI's own papers compute 6 latents, one a pass (Coconut: 2 per stage over 3 stages)
SEQUENTIAL_LATENTS = "latent.num_latents=6"

METHODS: dict[str, tuple[str, ...]] = {
    "no_cot": ("train.method=direct",),
    "cot": ("train.method=cot", "data.drop_last_step=false"),
    # the CoT teacher's sequence, its CoT removed a token at a time (kava.training.icot)
    "icot": ("train.method=icot", "data.drop_last_step=false", "prompt.teacher_delimiters=false"),
    "pccot": ("kava.alpha_kv=0",),
    "codi": ("latent.mode=sequential", "kava.alpha_kv=0", "kava.codi_position=answer_start", SEQUENTIAL_LATENTS),
    "coconut": ("latent.mode=sequential", "latent.projection=false", "kava.alpha_codi=0", "kava.alpha_kv=0",
                "kava.teacher_ce=false", "data.drop_last_step=false", SEQUENTIAL_LATENTS,
                "curriculum.enabled=true", "curriculum.stages=3"),
    "kava": (),
    # the pause-token control: the latent inputs are the fixed <latent> embedding, never fed back
    "pause": ("latent.num_iterations=0",),
}
