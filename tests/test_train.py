"""Training runs on tiny-llama: resume equals an uninterrupted run, faults stop cleanly, CLI errors, multi-process."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import skillmix.train as train_module
from skillmix import SkillMixError, load_model
from skillmix.cli import main
from skillmix.hub import load_base_model
from skillmix.runs import TrainConfig, read_losses
from skillmix.train import train

TINY = dict(model="tiny-llama", tasks=3, n_test=2, max_train_instances=8, batch_size=4, max_source_tokens=96,
            max_target_tokens=16, lr=1e-2)


def config(tmp_path, name="run", **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "output_dir": str(tmp_path / name), **kw})


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter_model.safetensors"))


def interrupt_at(monkeypatch, step_to_fail: int, exc: BaseException | None = None, nan: bool = False):
    real = train_module.train_step

    def step(ctx, step, indices):
        if step == step_to_fail:
            if nan:
                return float("nan"), 1, 1
            raise exc
        return real(ctx, step, indices)

    monkeypatch.setattr(train_module, "train_step", step)


@pytest.mark.parametrize("method", ["orchmoe", "poly"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, monkeypatch, method):
    full = config(tmp_path, "full", method=method, save_steps=2)
    summary = train(full)
    assert summary["steps"] == 6 and summary["resumed_from"] == 0
    part = config(tmp_path, "part", method=method, save_steps=2)
    interrupt_at(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(part)
    state = json.loads((tmp_path / "part" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3  # Ctrl-C saved the finished steps
    assert state["wall_s"] > 0  # and the wall time so far
    monkeypatch.undo()
    resumed = train(part, resume=True)
    assert resumed["resumed_from"] == 3
    assert resumed["train_wall_complete"] and resumed["train_wall_s"] >= state["wall_s"]  # the whole run's wall time
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "part" / "checkpoint").exists()
    losses = read_losses(tmp_path / "part")
    assert len(losses) == 6


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path, method="lora", save_steps=2)
    interrupt_at(monkeypatch, 4, nan=True)
    with pytest.raises(SkillMixError, match="loss became nan at step 5"):
        train(cfg)
    assert json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_corrupt_checkpoint_is_reported(tmp_path, monkeypatch):
    cfg = config(tmp_path, method="lora", save_steps=2)
    interrupt_at(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    (tmp_path / "run" / "checkpoint" / "state.pt").write_bytes(b"truncated")
    with pytest.raises(SkillMixError, match="corrupt or incomplete checkpoint"):
        train(cfg, resume=True)


def test_existing_output_dir_is_refused(tmp_path):
    cfg = config(tmp_path, method="lora", max_steps=1)
    train(cfg)
    with pytest.raises(SkillMixError, match="exists and is not empty; pass --overwrite or --resume"):
        train(cfg)
    assert train(cfg, overwrite=True)["steps"] == 1
    with pytest.raises(SkillMixError, match="options differ"):
        train(config(tmp_path, method="lora", max_steps=2), resume=True)


def test_trained_adapter_loads_and_beats_the_untrained_loss(tmp_path):
    summary = train(config(tmp_path, method="mode", epochs=3))
    losses = read_losses(tmp_path / "run")
    assert losses[-1] < losses[0]
    base, _, _ = load_base_model("tiny-llama")
    model = load_model(base, tmp_path / "run")
    assert model.method == "mode" and summary["trainable_params"] == sum(p.numel() for p in model.adapter_state_dict().values())


def test_cli_train_eval_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--method", "orchmoe", "--model", "tiny-llama", "--tasks", "2", "--n-test", "2",
            "--max-train-instances", "4", "--batch-size", "4", "--max-source-tokens", "96", "--max-target-tokens", "8",
            "--n-skills", "2", "--output-dir", str(out)]
    assert main(args) == 0
    assert json.loads((out / "train_config.json").read_text())["adapter"] == {"n_skills": 2}
    assert main(args) == 2
    assert "pass --overwrite or --resume" in capsys.readouterr().err
    assert main(["eval", "--adapter", str(out), "--max-new-tokens", "4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_examples"] == 4 and set(metrics["per_task"]) == set(json.loads((out / "train_summary.json").read_text())["tasks"])
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    # eval takes only the options it uses: no training flags at all, no data options beside --unseen-tasks
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--adapter", str(out), "--lr", "0.1"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --lr" in capsys.readouterr().err
    assert main(["eval", "--adapter", str(out), "--tasks", "3"]) == 2
    assert "eval --adapter: --tasks comes from the run's train_config.json" in capsys.readouterr().err
    assert main(["train", "--method", "lorax", "--output-dir", str(tmp_path / "x")]) == 2
    assert "SkillMixConfig.method='lorax': expected one of" in capsys.readouterr().err
    assert main(["compare", "--methods", "lora,foo", "--output-dir", str(tmp_path / "c")]) == 2
    assert "unknown method(s) foo" in capsys.readouterr().err
    assert main(["compare", "--methods", "orchmoe", "--budget", "10", "--model", "tiny-llama",
                 "--output-dir", str(tmp_path / "c")]) == 2
    assert "out of reach for method 'orchmoe'" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: molora\nlr: 0.001\nadapter:\n  num_experts: 2\n")
    cfg = TrainConfig.from_file(path, output_dir="x", lr=0.01)
    assert cfg.method == "molora" and cfg.lr == 0.01 and cfg.adapter == {"num_experts": 2}
    path.write_text("method: molora\nlearning_rate: 1\n")
    with pytest.raises(SkillMixError, match="unknown train option.*learning_rate"):
        TrainConfig.from_file(path)


def test_two_processes_match_one_process(tmp_path):
    common = ["train", "--method", "lora", "--model", "tiny-llama", "--tasks", "2", "--n-test", "2",
              "--max-train-instances", "8", "--max-source-tokens", "96", "--max-target-tokens", "8", "--lr", "0.01"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert main(common + ["--batch-size", "4", "--output-dir", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "skillmix"] + common + ["--batch-size", "2", "--output-dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    read = lambda d: read_losses(tmp_path / d)
    one, two = read("one"), read("two")
    assert len(one) == len(two) == 4
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["world_size"] == 2
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.parametrize("method", ["lora", "mode", "orchmoe", "poly"])
def test_bf16_mixed_precision_training(tmp_path, method):
    summary = train(config(tmp_path, method=method, bf16=True, max_steps=2))
    losses = read_losses(tmp_path / "run")
    assert summary["steps"] == 2 and len(losses) == 2
    assert all(math.isfinite(x) and x > 0 for x in losses)  # neither NaN nor inf, and a real loss
    trained = weights(tmp_path / "run")
    assert all(t.dtype == torch.float32 for t in trained.values())  # adapter weights stay float32 under bf16
    assert any(t.abs().sum() > 0 for k, t in trained.items() if "lora_B" in k)  # the steps changed the zero-init B
