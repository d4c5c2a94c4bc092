"""Config schema: every shipped config loads; bad input is a one-line KavaError."""

from pathlib import Path

import pytest

from kava.config import config_from_dict, load_config
from kava.errors import KavaError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
MINIMAL = {"model": {"name": "tiny-llama"}, "data": {"dataset": "x.jsonl", "source": "local"}}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.train.global_batch_size % cfg.train.micro_batch_size == 0
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), "each config starts with a comment saying what it is"


def test_paper_configs_follow_table6():
    cfg = load_config(Path(__file__).parent.parent / "configs" / "llama3b_aug_nl.yaml")
    assert (cfg.kava.rkv_lambda, cfg.latent.projection, cfg.kava.alpha_codi, cfg.kava.alpha_kv) == (0.0, False, 20, 2)
    q = load_config(Path(__file__).parent.parent / "configs" / "qwen05b_aug.yaml")
    assert (q.train.lr, q.train.weight_decay, q.kava.kv_loss) == (5e-4, 0.01, "mse")
    for p in CONFIGS:
        c = load_config(p)
        if c.data.source == "hub" and c.latent.mode == "jacobi":  # the KaVa configs (CODI, Coconut below)
            assert (c.lora.r, c.lora.alpha, c.lora.dropout) == (128, 32, 0.1)
            assert (c.latent.num_latents, c.latent.num_iterations, c.train.global_batch_size) == (24, 3, 128)
            assert c.train.grad_clip == 2.0


def test_codi_and_coconut_configs_follow_their_sources():
    root = Path(__file__).parent.parent / "configs"
    codi = load_config(root / "codi_llama1b_aug.yaml")  # zhenyi4/codi scripts/train_llama1b_gsm8k-aug.sh
    assert (codi.latent.mode, codi.latent.num_latents, codi.latent.projection) == ("sequential", 6, True)
    assert (codi.kava.alpha_codi, codi.kava.alpha_kv, codi.kava.codi_position) == (20, 0, "answer_start")
    assert (codi.train.lr, codi.train.epochs, codi.train.global_batch_size, codi.train.weight_decay) == (8e-4, 10, 128, 0.1)
    assert (codi.lora.r, codi.lora.alpha, codi.lora.dropout, codi.data.drop_last_step) == (128, 32, 0.1, True)
    assert not codi.curriculum.enabled
    coco = load_config(root / "coconut_llama1b_aug.yaml")  # facebookresearch/coconut args/gsm_coconut.yaml
    c = coco.curriculum
    assert c.enabled and (c.stages, c.thoughts_per_step, c.epochs_per_stage, c.mix_prob) == (3, 2, 3, 0.0)
    assert (coco.latent.mode, coco.latent.num_latents, coco.latent.projection) == ("sequential", 6, False)
    assert (coco.kava.alpha_codi, coco.kava.alpha_kv, coco.kava.teacher_ce) == (0, 0, False)
    assert (coco.train.lr, coco.train.epochs, coco.train.lr_scheduler, coco.train.weight_decay) == (1e-4, 25, "constant", 0.01)
    assert not coco.data.drop_last_step and not coco.lora.enabled


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["curriculum.enabled=true"], "exactly one of curriculum.steps_per_stage"),
        (["curriculum.enabled=true", "curriculum.steps_per_stage=5", "curriculum.epochs_per_stage=1"], "exactly one"),
        (["curriculum.enabled=true", "curriculum.steps_per_stage=5", "curriculum.thoughts_per_step=2",
          "latent.num_latents=5", "kava.alpha_kv=0"], "must equal curriculum.stages"),
        (["curriculum.enabled=true", "curriculum.steps_per_stage=5", "curriculum.thoughts_per_step=2",
          "latent.num_latents=6"], "needs kava.alpha_kv: 0"),
        (["curriculum.enabled=true", "curriculum.steps_per_stage=5", "train.method=cot"], "needs train.method: kava"),
        (["curriculum.start_stage=5"], "past the final stage"),
        (["latent.mode=parallel"], "latent.mode"),
    ],
)
def test_bad_curriculum_and_mode_are_clear_errors(overrides, message):
    with pytest.raises(KavaError) as err:
        config_from_dict(MINIMAL, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "random:llama-3.2-1b"])
def test_frozen_targets_from_a_random_network_are_refused(name):
    """Frozen targets are the starting weights' CoT: from a random network they are noise to distil toward."""
    with pytest.raises(KavaError) as err:
        config_from_dict(MINIMAL, [f"model.name={name}", "kava.teacher_targets=frozen"])
    assert "starts from random weights" in str(err.value) and "\n" not in str(err.value)
    # from a trained model, or with nothing distilled (PCCoT without CODI, a baseline), it is allowed
    config_from_dict(MINIMAL, ["model.name=runs/base/backbone", "kava.teacher_targets=frozen"])
    config_from_dict(MINIMAL, [f"model.name={name}", "kava.teacher_targets=frozen", "train.method=cot"])
    config_from_dict(MINIMAL, [f"model.name={name}", "kava.teacher_targets=frozen", "kava.alpha_kv=0",
                               "kava.alpha_codi=0"])


def test_overrides_are_typed():
    cfg = config_from_dict(MINIMAL, ["train.lr=1e-4", "latent.num_latents=12", "lora.enabled=false", "train.loggers=[jsonl]"])
    assert cfg.train.lr == 1e-4 and cfg.latent.num_latents == 12 and cfg.lora.enabled is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown key 'train.lrr'"),
        (["kava.rkv_lambda=1.5"], "kava.rkv_lambda"),
        (["kava.compression=topk"], "kava.compression"),
        (["train.global_batch_size=10", "train.micro_batch_size=4"], "multiple of"),
        (["nonsense"], "key.path=value"),
    ],
)
def test_bad_values_are_clear_errors(overrides, message):
    with pytest.raises(KavaError) as err:
        config_from_dict(MINIMAL, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(KavaError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(KavaError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(KavaError, match="mapping"):
        load_config(scalar)
    missing = tmp_path / "missing.yaml"
    missing.write_text("model: {name: tiny-llama}\n")
    with pytest.raises(KavaError, match="missing key 'data'"):
        load_config(missing)
