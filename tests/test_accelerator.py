"""The accelerator path, exercised on this CPU: bf16 autocast runs (training, evaluation, bench) or is refused
in one line, never silently ignored; fp16's gradient scaler unscales before clipping; torch.compile runs a
defended model, and a defense it cannot compile (CIFS) is refused in one line; the evaluation backs off on
out-of-memory; device checks."""

from __future__ import annotations

import pytest
import torch
from conftest import write_tiny_cifar

from robustact import build_model
from robustact.cli import main
from robustact.config import apply_overrides, load_preset, resolve
from robustact.errors import ConfigError, RobustactError
from robustact.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.train_subset=null", "data.val_size=20", "data.batch_size=20", "model.arch_kwargs={width: 4}",
        "training.epochs=1", "training.attack.steps=1", "training.val_n=10", "training.val_attack_steps=1",
        "training.channels_last=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("accel"))


def tiny(*extra: str):
    return resolve(apply_overrides(load_preset("demo"), [*TINY, *extra]))


def test_bf16_runs_under_cpu_autocast_and_fp16_is_refused(data, tmp_path):
    trainer = Trainer(tiny("training.amp=bf16"), tmp_path / "bf16", data_root=str(data), progress=False)
    seen = []
    real = trainer.objective

    def objective(model, x, y, ctx):  # what the training step really runs under
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(model, x, y, ctx)

    trainer.objective = objective
    trainer.fit()
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    with pytest.raises(ConfigError, match="amp=fp16 needs a CUDA device"):
        Trainer(tiny("training.amp=fp16"), tmp_path / "fp16", data_root=str(data), progress=False)


def test_fp16_scaler_unscales_before_clipping(data, tmp_path, monkeypatch):
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *args, **kwargs):  # the norm clipping sees
        params = list(params)
        norms.append(torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm().item())
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    for name, scaled in (("plain", False), ("scaled", True)):  # the same first step, from the same weights
        trainer = Trainer(tiny("training.grad_clip=0.5"), tmp_path / name, data_root=str(data), progress=False)
        if scaled:
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)  # the path fp16 takes on a GPU
        x, y = next(iter(trainer.loader))
        trainer.train_step(x, y, 0.01)
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)  # unscaled before clipping: not 4096 times larger


def test_compile_runs_a_defended_model_and_refuses_cifs(data, tmp_path):
    trainer = Trainer(tiny("model.defense=cas", "training.compile=true"), tmp_path / "cas", data_root=str(data),
                      progress=False)
    x, y = next(iter(trainer.loader))
    loss, _ = trainer.train_step(x, y, 0.01)
    assert torch.isfinite(loss) and hasattr(trainer.forward_model, "_orig_mod")
    with pytest.raises(ConfigError, match="torch.compile cannot compile CIFSSite"):
        Trainer(tiny("model.defense=cifs", "training.compile=true"), tmp_path / "cifs", data_root=str(data),
                progress=False)


def test_bench_prints_only_settings_it_ran(capsys):
    assert main(["bench", "--archs", "resnet_small", "--settings", "bf16+cl", "--steps", "1", "--batch-size", "4",
                 "--pgd-steps", "1", "--device", "cpu"]) == 0
    assert "resnet_small bf16+cl" in capsys.readouterr().out
    assert main(["bench", "--settings", "fp16", "--device", "cpu"]) == 2
    assert main(["bench", "--settings", "tf16", "--device", "cpu"]) == 2
    assert "unknown bench setting" in capsys.readouterr().err


def test_evaluation_in_bf16_and_its_agreement_with_fp32(tmp_path, capsys):
    from robustact.attacks import PGD
    from robustact.evaluation import evaluate

    torch.manual_seed(0)
    model = build_model("resnet_small", width=8).eval()
    x = torch.rand(16, 3, 32, 32)
    y = model(x).argmax(1)
    attacks = {"pgd": PGD(8 / 255, steps=3)}
    fp32 = evaluate(model, x, y, attacks, eps=8 / 255, progress=False)
    bf16 = evaluate(model, x, y, attacks, eps=8 / 255, progress=False, amp="bf16")
    agree = (fp32.robust["pgd"] == bf16.robust["pgd"]).float().mean().item()
    assert agree >= 0.8  # an untrained net, near-ties everywhere; the trained demo: docs/benchmarks.md
    with pytest.raises(RobustactError, match="fp16 needs a CUDA device"):
        evaluate(model, x, y, attacks, eps=8 / 255, progress=False, amp="fp16")


def test_evaluation_backs_off_on_out_of_memory():
    from robustact.attacks import PGD
    from robustact.evaluation import evaluate

    torch.manual_seed(0)
    model = build_model("resnet_small", width=4).eval()
    x = torch.rand(12, 3, 32, 32)
    y = model(x).argmax(1)
    fgsm = PGD(8 / 255, steps=1, random_start=False)

    class Tight:  # "runs out of memory" above 3 images
        def __call__(self, model, x, y):
            if len(x) > 3:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return fgsm(model, x, y)

    whole = evaluate(model, x, y, {"a": fgsm}, eps=8 / 255, batch_size=12, progress=False)
    split = evaluate(model, x, y, {"a": Tight()}, eps=8 / 255, batch_size=12, progress=False)
    assert torch.equal(whole.robust["a"], split.robust["a"]) and split.meta["oom_splits"] >= 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_one_line(capsys):
    assert main(["bench", "--device", "cuda", "--archs", "resnet_small"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_resume_restores_rng_states_of_eleven_or_more_gpus_in_device_order(monkeypatch):
    """0.1.0 sorted the keys as strings (cuda0, cuda1, cuda10, cuda11, cuda2, …): with 11+ GPUs each device got
    another device's generator on resume."""
    from robustact.checkpoints.state import set_rng_state

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    state = {f"rng.cuda{i}": torch.full((4,), i, dtype=torch.uint8) for i in reversed(range(12))}
    set_rng_state(state)
    assert [int(s[0]) for s in restored] == list(range(12))
