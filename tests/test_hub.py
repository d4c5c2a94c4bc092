"""kava.hub, offline: the model card of a real tiny sweep's checkpoint (valid by
huggingface_hub's own parser), checkpoints loaded by repo id from a folder laid out as the
hub cache lays it, and one-line errors under HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, constants

import kava.api
from fixtures_sweep import OVERRIDES
from kava.cli import main
from kava.errors import KavaError
from kava.hub import model_card, push, resolve_checkpoint

pytest_plugins = ["fixtures_eval"]

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_card_from_a_sweep_checkpoint(tiny_sweep, tmp_path):
    ckpt = tiny_sweep / "tiny" / "seed_1" / "checkpoint-final"
    model_card(ckpt, "me/kava-tiny").save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")  # huggingface_hub's parser, model-index included
    summary = yaml.safe_load((tiny_sweep / "tiny" / "summary.yaml").read_text())["datasets"]
    seed = {ds: yaml.safe_load((ckpt.parent / f"results_{ds}.yaml").read_text()) for ds in ("gsm8k", "svamp")}
    got = {(r.dataset_name, r.metric_type): (r.metric_value, r.dataset_type) for r in card.data.eval_results}
    assert got == {
        ("gsm8k", "accuracy"): (round(summary["gsm8k"]["accuracy_mean"], 2), "openai/gsm8k"),
        ("gsm8k", "forward_passes"): (round(seed["gsm8k"]["forward_passes_mean"], 2), "openai/gsm8k"),
        ("svamp", "accuracy"): (round(summary["svamp"]["accuracy_mean"], 2), "ChilleD/SVAMP"),
        ("svamp", "forward_passes"): (round(seed["svamp"]["forward_passes_mean"], 2), "ChilleD/SVAMP"),
    }
    assert card.data.model_name == "kava-tiny" and card.data.library_name == "kava"
    assert card.data.license == "apache-2.0" and card.data.base_model is None  # tiny-llama is no hub model
    text = card.text
    assert "| latent tokens M | 6 |" in text and "| Jacobi iterations T | 2 |" in text
    assert "| optimizer steps | 12 (global batch 8" in text
    assert "kava train --config configs/tiny.yaml --seed 1 " + " ".join(OVERRIDES) in text
    assert "Over the run's 2 seeds [1, 2] (mean ± sample std)" in text
    acc = summary["gsm8k"]
    assert f"| gsm8k | {acc['accuracy_mean']:.2f} ± {acc['accuracy_std']:.2f} |" in text
    assert "arXiv:2510.02312" in text and "@inproceedings" in text


def test_card_of_an_unevaluated_checkpoint(tiny_checkpoint, tmp_path):
    model_card(tiny_checkpoint, "me/x", license="mit").save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.eval_results is None and card.data.license == "mit"
    assert "Not evaluated yet" in card.text and "kava train --config kava_config.yaml" in card.text


def _hub_cache(checkpoint: Path, cache: Path, repo: str) -> Path:
    """`checkpoint` as `snapshot_download` leaves it: blobs named by hash, a snapshot of links, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / COMMIT
    for f in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != "training_state.pt"):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / f.relative_to(checkpoint)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(link.relative_to(root).parts) - 1), "blobs", blob.name))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snap


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_repo_id_loads_from_the_hub_cache(tiny_checkpoint, offline_hub, capsys):
    snap = _hub_cache(tiny_checkpoint, offline_hub, "me/kava-tiny")
    assert resolve_checkpoint("me/kava-tiny") == snap
    assert resolve_checkpoint("me/kava-tiny", revision=COMMIT) == snap
    question = "Tom has 3 apples and buys 4 more. How many?"
    local = kava.api.load(checkpoint=tiny_checkpoint, device="cpu").answer(question)[0]
    hub = kava.api.load(checkpoint="me/kava-tiny", device="cpu").answer(question)[0]
    assert hub.text == local.text and hub.forward_passes == local.forward_passes
    assert main(["infer", "--checkpoint", "me/kava-tiny", "--revision", COMMIT, "--question", question,
                 "--device", "cpu"]) == 0
    assert local.text in capsys.readouterr().out


def test_offline_errors_are_one_line(tiny_checkpoint, offline_hub, capsys):
    with pytest.raises(KavaError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        resolve_checkpoint("me/not-cached")
    assert main(["evaluate", "--checkpoint", "me/not-cached", "--datasets", "gsm8k"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "not in the hub cache" in err
    assert main(["push", str(tiny_checkpoint), "me/kava-tiny"]) == 2
    err = capsys.readouterr().err
    assert err == "error: kava push needs the hub, but HF_HUB_OFFLINE=1 is set; unset it to push\n"
    assert main(["push", str(tiny_checkpoint), "not a repo"]) == 2
    assert "is not a hub repo id" in capsys.readouterr().err
    with pytest.raises(KavaError, match="--revision is for hub repo ids"):
        resolve_checkpoint(tiny_checkpoint, revision="main")


def test_push_uploads_the_checkpoint_and_its_card(tiny_checkpoint, monkeypatch):
    """The calls kava makes to huggingface_hub (recorded: the tests never reach the network)."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return f"https://hf.co/{repo_id}"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload_folder", kw["repo_id"], kw)))
    monkeypatch.setattr(huggingface_hub.ModelCard, "push_to_hub",
                        lambda self, repo_id, **kw: calls.append(("card", repo_id, str(self))))
    assert push(tiny_checkpoint, "me/kava-tiny", private=True) == "https://hf.co/me/kava-tiny"
    assert [c[:2] for c in calls] == [("create_repo", "me/kava-tiny"), ("upload_folder", "me/kava-tiny"),
                                      ("card", "me/kava-tiny")]
    assert calls[0][2]["private"] is True
    up = calls[1][2]
    assert Path(up["folder_path"]) == tiny_checkpoint
    assert up["ignore_patterns"] == ["training_state.safetensors", "training_state.json", "training_state.pt"]
    assert calls[2][2].startswith("---\n") and "library_name: kava" in calls[2][2]


def test_a_local_folder_wins_over_a_repo_id(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_checkpoint, tmp_path / "me" / "ckpt")
    assert resolve_checkpoint("me/ckpt") == Path("me/ckpt")


def test_push_dry_run_prints_the_card(tiny_checkpoint, capsys):
    assert main(["push", str(tiny_checkpoint), "me/kava-tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    first, card = out.split("\n", 1)
    assert first.startswith("would upload to me/kava-tiny: adapter/") and "training_state" not in first
    assert "kava_config.yaml" in first and "projection.safetensors" in first
    assert card.startswith("---\n") and "# kava-tiny" in card
