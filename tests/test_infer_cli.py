"""`kava infer` and the error paths of `kava evaluate`, through kava.cli.main."""

from __future__ import annotations

import io
import json
import re

import pytest

import kava.api
from kava.cli import main
from kava.errors import KavaError
from kava.io import read_jsonl

pytest_plugins = ["fixtures_eval"]

Q = "Tom has 3 apples and buys 4 more. How many apples does he have?"
ANSWER_LINE = re.compile(r"^answer: \S+ · forward passes: (\d+) · (\d+) tokens · [0-9.]+ s · (\w+)$", re.M)


def infer(ckpt, *extra):
    return main(["infer", "--checkpoint", str(ckpt), "--max-new-tokens", "5", *extra])


def test_question(tiny_checkpoint, capsys):
    assert infer(tiny_checkpoint, "--question", Q) == 0
    out = capsys.readouterr().out
    (m,) = ANSWER_LINE.findall(out)
    passes, tokens, mode = int(m[0]), int(m[1]), m[2]
    assert mode == "latent" and passes == 1 + 2 + 1 + tokens - 1  # tiny.yaml: T = 2


def test_question_no_latent_and_output(tiny_checkpoint, tmp_path, capsys):
    out_file = tmp_path / "one.jsonl"
    assert infer(tiny_checkpoint, "--question", Q, "--no-latent", "--output", str(out_file)) == 0
    (rec,) = read_jsonl(out_file)
    assert rec["mode"] == "cot" and rec["question"] == Q and rec["forward_passes"] == rec["generated_tokens"]
    assert "· cot" in capsys.readouterr().out


def test_input_text_file(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "qs.txt"
    src.write_text("What is 2 plus 3?\n\nA duck lays 5 eggs a day. How many in a week?\n")
    out_file = tmp_path / "answers.jsonl"
    assert infer(tiny_checkpoint, "--input", str(src), "--output", str(out_file), "--batch-size", "2") == 0
    recs = read_jsonl(out_file)
    assert [r["line"] for r in recs] == [1, 3]
    assert recs[1]["question"] == "A duck lays 5 eggs a day. How many in a week?"
    assert all({"text", "answer", "forward_passes", "generated_tokens", "seconds"} <= set(r) for r in recs)
    assert "wrote 2 answer(s)" in capsys.readouterr().out


def test_input_jsonl_with_bad_lines(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "qs.jsonl"
    src.write_text(
        json.dumps({"id": "a", "question": "What is 2 plus 3?"}) + "\n"
        + "{not json\n"
        + json.dumps({"id": "c", "question": "What is 7 minus 4?"}) + "\n"
        + json.dumps({"id": "d", "question": "  "}) + "\n"
        + json.dumps({"id": "e", "text": "no question field"}) + "\n"
    )
    rc = infer(tiny_checkpoint, "--input", str(src))
    captured = capsys.readouterr()
    assert rc == 1
    err = captured.err
    assert "line 2: not valid JSON" in err and "line 4: empty question" in err and "line 5: no question" in err
    assert "3 bad line(s)" in err
    assert captured.out.count("answer: ") == 2
    assert "Q: What is 2 plus 3?" in captured.out and "Q: What is 7 minus 4?" in captured.out


def test_show_latents(tiny_checkpoint, capsys):
    assert infer(tiny_checkpoint, "--question", Q, "--show-latents") == 0
    out = capsys.readouterr().out
    assert "latent tokens" in out
    rows = re.findall(r"^\s+(\d+): (.*)$", out, re.M)
    assert [int(i) for i, _ in rows] == list(range(1, 7))  # tiny.yaml: M = 6
    assert all(len(re.findall(r"'[^']*' [01]\.\d\d", cells)) == 5 for _, cells in rows)


def test_nearest_tokens_match_the_lm_head(perturbed_pipeline):
    import torch

    pipe = perturbed_pipeline
    (a,) = pipe.answer([Q], return_latents=True, max_new_tokens=2)
    near = pipe.nearest_tokens(a.latent_hidden, k=5)
    assert len(near) == pipe.model.num_latents and all(len(t) == 5 for t in near)
    logits = pipe.model.backbone.get_output_embeddings()(a.latent_hidden)
    best = logits.argmax(-1).tolist()
    assert [t[0][0] for t in near] == [pipe.tokenizer.decode([i]) for i in best]
    probs = [p for _, p in near[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert isinstance(a.latent_hidden, torch.Tensor)


def test_interactive_loop(tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 plus 3?\n\n  \nWhat is 7 minus 4?\nexit\nnever asked\n"))
    assert infer(tiny_checkpoint) == 0
    out = capsys.readouterr().out
    assert out.count("answer: ") == 2
    assert "never asked" not in out
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 plus 3?"))  # EOF without a newline
    assert infer(tiny_checkpoint) == 0
    assert capsys.readouterr().out.count("answer: ") == 1


# ----- errors: one line, exit 2 ------------------------------------------------------------


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_empty_question(tiny_checkpoint, capsys):
    assert "empty question" in _error(capsys, ["infer", "--checkpoint", str(tiny_checkpoint), "--question", "  "])


def test_missing_checkpoint(tmp_path, capsys):
    assert "checkpoint not found" in _error(capsys, ["infer", "--checkpoint", str(tmp_path / "nope"), "--question", Q])
    assert "checkpoint not found" in _error(capsys,
                                            ["evaluate", "--checkpoint", str(tmp_path / "nope"), "--datasets", "gsm8k"])
    assert "not a kava checkpoint" in _error(capsys, ["evaluate", "--checkpoint", str(tmp_path), "--datasets", "gsm8k"])


def test_incomplete_checkpoint(tiny_checkpoint, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    shutil.rmtree(broken / "adapter")
    assert "is incomplete: adapter/adapter_config.json is missing" in _error(
        capsys, ["infer", "--checkpoint", str(broken), "--question", Q])


def test_unknown_dataset(tiny_checkpoint, capsys):
    err = _error(capsys,
                 ["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", "gsm9k", "--source", "offline"])
    assert "gsm9k" in err and "gsm8k" in err


def test_limit_zero(tiny_checkpoint, capsys):
    err = _error(capsys, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--datasets", "gsm8k", "--limit", "0"])
    assert "--limit" in err


def test_base_model_latent_mode(capsys):
    err = _error(capsys, ["evaluate", "--model", "tiny-llama", "--mode", "latent", "--datasets", "gsm8k"])
    assert "no latent training" in err
    assert "no latent training" in _error(capsys,
                                          ["infer", "--model", "tiny-llama", "--mode", "latent", "--question", Q])
    assert "latent mode" in _error(capsys, ["infer", "--model", "tiny-llama", "--show-latents", "--question", Q])


def test_unavailable_device(tiny_checkpoint, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "no CUDA GPU" in _error(capsys,
                                   ["infer", "--checkpoint", str(tiny_checkpoint), "--device", "cuda", "--question", Q])


def test_bad_input_file(tmp_path, tiny_checkpoint, capsys):
    assert "input file not found" in _error(capsys,
                                            ["infer", "--checkpoint", str(tiny_checkpoint), "--input",
                                             str(tmp_path / "x.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "has no questions" in _error(capsys, ["infer", "--checkpoint", str(tiny_checkpoint), "--input", str(empty)])


def test_help_has_examples(capsys):
    for cmd in ("evaluate", "infer"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert f"kava {cmd} --checkpoint" in capsys.readouterr().out


# ----- base models through the API ---------------------------------------------------------


def test_base_model_keeps_its_vocabulary(tmp_path, capsys):
    from kava.model.tiny import build_char_tokenizer

    pipe = kava.api.load(model="tiny-llama", device="cpu")
    assert pipe.is_base_model and pipe.default_mode == "cot"
    assert len(pipe.tokenizer) == len(build_char_tokenizer())  # no <bot>/<eot>/<latent> added
    assert pipe.model.backbone.get_input_embeddings().weight.shape[0] == len(pipe.tokenizer)
    with pytest.raises(KavaError, match="no latent training"):
        pipe.answer([Q], mode="latent")
    (a,) = pipe.answer([Q], mode="direct", max_new_tokens=3)
    assert a.forward_passes == a.generated_tokens <= 3
    # and the CLI runs it in cot mode by default
    assert main(["infer", "--model", "tiny-llama", "--question", Q, "--max-new-tokens", "3"]) == 0
    assert "· cot" in capsys.readouterr().out


def test_api_argument_errors(tiny_checkpoint):
    with pytest.raises(KavaError, match="exactly one"):
        kava.api.load()
    with pytest.raises(KavaError, match="exactly one"):
        kava.api.load(checkpoint=tiny_checkpoint, model="tiny-llama")
    with pytest.raises(KavaError, match="dtype"):
        kava.api.load(model="tiny-llama", dtype="float8")


def test_inference_loads_merge_lora_into_the_weights(tiny_checkpoint):
    """Issue 20: evaluation ran LoRA unmerged (three matrix products per projection). kava.api
    loads fold the adapters into the weights; the latents and answers are those of the unmerged model."""
    import torch

    from fixtures_eval import perturb_all
    from kava.inference.generate import generate
    from kava.training.checkpoint import load_checkpoint

    pipe = kava.api.load(checkpoint=tiny_checkpoint, device="cpu")
    assert not any("lora_" in n for n, _ in pipe.model.named_modules())
    merged, _tok, builder, _cfg = load_checkpoint(tiny_checkpoint)
    unmerged, _tok, _builder, _cfg = load_checkpoint(tiny_checkpoint)
    for m in (merged, unmerged):  # the same noise on both (a barely trained model answers EOS at once)
        perturb_all(m, seed=3, scale=0.3)
    merged.merge_lora()
    assert not any("lora_" in n for n, _ in merged.named_modules())
    assert any("lora_" in n for n, _ in unmerged.named_modules())
    qs = ["Sam has 3 pens and buys 2 boxes of 3 pens. How many pens?", "What is 7?"]
    a = generate(merged, builder, qs, mode="latent", max_new_tokens=4, return_latents=True)
    b = generate(unmerged, builder, qs, mode="latent", max_new_tokens=4, return_latents=True)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    torch.testing.assert_close(a[0].latent_hidden, b[0].latent_hidden, atol=1e-4, rtol=1e-4)


def test_api_evaluate_follows_hf_hub_offline(tiny_pipeline, monkeypatch):
    """`pipe.evaluate(dataset)` chooses its source as `kava evaluate` does: the offline copies
    when HF_HUB_OFFLINE=1 is set (it asked the hub before), the hub otherwise; a given source wins."""
    from huggingface_hub import constants

    real, asked = kava.api.load_eval_dataset, []

    def recording(name, source="hub", limit=None):
        asked.append(source)
        return real(name, source="offline", limit=limit)

    monkeypatch.setattr(kava.api, "load_eval_dataset", recording)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert tiny_pipeline.evaluate("gsm8k", limit=2, max_new_tokens=2)["n"] == 2
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    tiny_pipeline.evaluate("gsm8k", limit=1, max_new_tokens=2)
    tiny_pipeline.evaluate("gsm8k", source="offline", limit=1, max_new_tokens=2)
    assert asked == ["offline", "hub", "offline"]


def _read_until(fd, marker: bytes, seen: bytearray, start: int, timeout: float = 300) -> int:
    """Read the terminal into `seen` until `marker` appears after offset `start`; the offset after it."""
    import os
    import select
    import time

    end = time.monotonic() + timeout
    while (at := seen.find(marker, start)) < 0:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {marker!r} in {bytes(seen[start:][-2000:])!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            raise AssertionError(f"the terminal closed before {marker!r}: {bytes(seen[start:][-2000:])!r}")
        seen += chunk
    return at + len(marker)


def test_interactive_terminal_has_history_and_quits_on_ctrl_c(tiny_checkpoint, tmp_path):
    """At a terminal (a pseudo-terminal here), `kava infer` edits lines with readline: the up
    arrow recalls the last question, the history is saved in $KAVA_CACHE_DIR; Ctrl-C quits with
    exit code 0 and no "run the same command again" (nothing was interrupted that could resume)."""
    import os
    import pty
    import signal
    import sys
    import time
    from pathlib import Path

    env = {**os.environ, "KAVA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
           "OMP_NUM_THREADS": "1", "TERM": "xterm"}
    argv = [sys.executable, "-m", "kava", "infer", "--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "3"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: kava at a terminal
        os.execve(sys.executable, argv, env)
    seen, status = bytearray(), None
    try:
        at = _read_until(fd, b"> ", seen, 0)
        os.write(fd, b"What is 2 plus 3?\r")
        at = _read_until(fd, b"> ", seen, _read_until(fd, b"answer: ", seen, at))
        os.write(fd, b"\x1b[A")  # up arrow: the question again, from the history
        at = _read_until(fd, b"What is 2 plus 3?", seen, at)
        os.write(fd, b"\r")
        at = _read_until(fd, b"> ", seen, _read_until(fd, b"answer: ", seen, at))
        os.write(fd, b"\x03")  # Ctrl-C
        deadline = time.monotonic() + 60
        while status is None and time.monotonic() < deadline:
            done, code = os.waitpid(pid, os.WNOHANG)
            status = code if done else None
            time.sleep(0.1)
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    text = seen.decode(errors="replace")
    assert status is not None and os.waitstatus_to_exitcode(status) == 0, text
    assert text.count("answer: ") == 2
    assert "run the same command again" not in text and "Traceback" not in text
    assert (tmp_path / "infer_history").read_text().splitlines()[-1] == "What is 2 plus 3?"
