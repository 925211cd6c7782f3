"""The trainer: run directory contents, exact resume, model selection on validation, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import requires_cifar
from safetensors.torch import load_file

from robustact.checkpoints import load_model, load_weights_into
from robustact.config import apply_overrides, load_preset
from robustact.errors import CheckpointError, RobustactError
from robustact.training import Trainer

pytestmark = requires_cifar

TINY = [
    "model.arch_kwargs={width: 8}",
    "data.train_subset=192",
    "data.val_size=64",
    "data.batch_size=64",
    "training.epochs=3",
    "training.attack.steps=2",
    "training.val_n=32",
    "training.val_attack_steps=2",
    "training.channels_last=false",
]


def tiny_config(*extra: str) -> dict:
    return apply_overrides(load_preset("demo"), [*TINY, *extra])


class StopAfter(Trainer):
    """A trainer that is 'killed' right after epoch `stop` has been checkpointed."""

    stop = 1

    def end_epoch(self, epoch, record):
        super().end_epoch(epoch, record)
        if epoch + 1 == self.stop:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    Trainer(tiny_config(), out, progress=False).fit()
    return out


def test_run_directory_layout(straight_run):
    files = {p.relative_to(straight_run).as_posix() for p in straight_run.rglob("*") if p.is_file()}
    assert {"config.yaml", "metrics.jsonl", "checkpoints/last/model.safetensors", "checkpoints/last/state.safetensors",
            "checkpoints/last/info.json", "checkpoints/last/manifest.json", "checkpoints/best/model.safetensors",
            "checkpoints/best/info.json"} <= files
    assert not any(".tmp" in f or f.endswith(".old") for f in files)  # no leftovers of the atomic writes
    records = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"train_loss", "train_acc", "val_clean_acc", "val_pgd2_acc", "train_images_per_s"} <= set(r)
        assert not any(k.startswith("test_") for k in r)  # no test-set selection by default
    best = json.loads((straight_run / "checkpoints" / "best" / "info.json").read_text())
    assert best["selected_on"] == "val"
    assert best["metric"] == max(r["val_pgd2_acc"] for r in records)


def test_resume_ends_with_the_same_weights(straight_run, tmp_path):
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        StopAfter(tiny_config(), out, progress=False).fit()
    assert json.loads((out / "checkpoints" / "last" / "info.json").read_text())["epoch"] == 1
    with pytest.raises(RobustactError, match="--resume"):
        Trainer(tiny_config(), out, progress=False)  # never silently overwrite a run
    Trainer.resume(out, progress=False).fit()
    a = load_file(straight_run / "checkpoints" / "last" / "model.safetensors")
    b = load_file(out / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_checkpoint_roundtrip_and_wrong_architecture(straight_run):
    model, config, weights = load_model(straight_run, which="last")
    assert weights.parent.name == "last" and config.model.arch == "resnet_small"
    assert not model.training
    from robustact import build_model

    with pytest.raises(CheckpointError, match="resnet18"):
        load_weights_into(build_model("resnet18"), load_file(weights), "ckpt")
    with pytest.raises(CheckpointError, match="holds a 'resnet_small' model"):
        load_model(straight_run, arch="resnet18")


def test_select_on_test_is_explicit(tmp_path):
    out = tmp_path / "paper-style"
    Trainer(tiny_config("training.epochs=1", "training.select_on_test=true"), out, progress=False).fit()
    record = json.loads((out / "metrics.jsonl").read_text())
    assert "test_pgd2_acc" in record
    assert json.loads((out / "checkpoints" / "best" / "info.json").read_text())["selected_on"] == "test"


def test_label_mask_defense_records_the_aux_heads_accuracy(tmp_path, straight_run):
    """CAS trains with the label's mask (train_acc sees the label); train_aux_acc is the honest figure."""
    out = tmp_path / "cas"
    Trainer(tiny_config("training.epochs=1", "model.defense=cas"), out, progress=False).fit()
    record = json.loads((out / "metrics.jsonl").read_text())
    assert 0.0 <= record["train_aux_acc"] <= 1.0 and record["train_aux_acc"] < record["train_acc"]
    plain = json.loads((straight_run / "metrics.jsonl").read_text().splitlines()[0])
    assert "train_aux_acc" not in plain


def test_activation_weight_decay_reaches_the_optimizer_and_survives_resume(tmp_path):
    out = tmp_path / "sparta"
    config = tiny_config("training.epochs=2", "model.activation=sparta_b1",
                         "training.optimizer.activation_weight_decay=0")
    trainer = StopAfter(config, out, progress=False)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [5e-4, 0.0]
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    resumed = Trainer.resume(out, progress=False)
    assert [g["weight_decay"] for g in resumed.optimizer.param_groups] == [5e-4, 0.0]
    resumed.fit()
    with pytest.raises(RobustactError, match="no learnable activation"):
        Trainer(tiny_config("training.optimizer.activation_weight_decay=0"), tmp_path / "relu", progress=False)


def test_init_from_seeds_a_defended_model_from_a_plain_run(straight_run, tmp_path):
    import shutil

    src = load_file(straight_run / "checkpoints" / "best" / "model.safetensors")
    out = tmp_path / "cas"
    moved = tmp_path / "source"  # the init run is needed to start, not to resume
    shutil.copytree(straight_run, moved)
    trainer = StopAfter(tiny_config("training.epochs=2", "model.defense=cas", f"model.init_from={moved}"), out,
                        progress=False)
    own = trainer.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in src.items())  # every plain tensor taken over
    fresh = [k for k in own if k not in src]
    assert fresh and all(".site." in k for k in fresh), fresh  # only the CAS sites' heads start fresh
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    shutil.rmtree(moved)
    Trainer.resume(out, progress=False).fit()  # does not look for the init run again
    with pytest.raises(CheckpointError, match="does not fit"):
        Trainer(tiny_config("model.arch_kwargs={width: 16}", f"model.init_from={straight_run}"), tmp_path / "w",
                progress=False)
