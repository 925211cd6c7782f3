"""Multi-process training and evaluation on PyTorch's own engine (torchrun, gloo on this CPU).

- 2 processes with the same global batch and seed end where one process ends: every tensor within 2e-4 after 2
  epochs (the all-reduce sums in another order; this small network amplifies such rounding to ~1e-4 in four
  steps — as much as one process with 2 threads instead of 1 does). Batch norm is over the global batch
  (`training.sync_bn`, `GlobalBatchNorm` on CPU: torch's SyncBatchNorm needs GPUs), so the single-process
  reference is plain training. The objective is clean CE: an attack's sign() turns that rounding into whole
  steps, so the adversarial path is checked per step instead (random starts drawn for the global batch and
  sliced: identical; PGD examples of each share equal to the single-process ones) and for reproducibility (two
  2-process PGD-AT runs are bit-identical, and equal to the same job spread over two torchrun "nodes").
- Resume with another number of processes; a killed process stops the job with one clear line and the run
  resumes; a sharded evaluation's per-example report equals the single-process one, with cascades and resume.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import requires_cifar
from safetensors.torch import load_file

from robustact.cli import main

pytestmark = [requires_cifar, pytest.mark.usefixtures("one_thread")]

CONFIG = {"base": "demo",
          "data": {"train_subset": 96, "val_size": 32, "batch_size": 32},
          "model": {"arch_kwargs": {"width": 8}},
          "training": {"epochs": 2, "objective": "standard", "attack": {"steps": 2}, "val_n": 16,
                       "val_attack_steps": 1, "channels_last": False, "schedule": {"name": "constant"},
                       "optimizer": {"lr": 0.001, "momentum": 0.0, "nesterov": False}}}
ENV = {"OMP_NUM_THREADS": "1"}


def torchrun(*args: str, nproc: int = 2, extra: list[str] | None = None, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", *(extra or ["--standalone"]),
                f"--nproc_per_node={nproc}"]
    return subprocess.run([*launcher, "-m", "robustact", *args], capture_output=True, text=True, timeout=600,
                          env=os.environ | ENV | (env or {}))


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "eq.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "last" / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("defense, activation", [(None, "relu"), ("cas", "relu"), ("cifs", "relu"),
                                                 ("ewas", "relu"), (None, "sparta")])
def test_two_processes_end_where_one_process_ends(config_file, tmp_path, defense, activation):
    model = [f"model.defense={defense or 'none'}", f"model.activation={activation}"]
    sets = [arg for s in model for arg in ("--set", s)]
    job = torchrun("train", "--config", str(config_file), "--out", str(tmp_path / "ddp"), "--no-progress",
                   "--set", "training.sync_bn=true", *sets)
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout.count("run directory:") == 1  # rank 0 speaks for the job
    assert main(["train", "--config", str(config_file), "--out", str(tmp_path / "one"), "--no-progress", *sets]) == 0
    a, b = weights(tmp_path / "one"), weights(tmp_path / "ddp")
    assert max_difference(a, b) < 2e-4
    assert all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())  # num_batches_tracked
    metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]  # written once, by rank 0


def test_the_training_attack_of_each_share_is_the_one_process_attack_of_those_rows():
    from robustact.attacks import PGD
    from robustact.bench import small_cnn

    torch.manual_seed(0)
    model = small_cnn().eval()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.manual_seed(1)
    whole = PGD(8 / 255, steps=3, seed=None)(model, x, y)
    starts = []
    for rank in range(2):
        torch.manual_seed(1)  # every process's global RNG is in the same state
        share = slice(4 * rank, 4 * rank + 4)
        part = PGD(8 / 255, steps=3, seed=None, shard=(rank, 2))(model, x[share], y[share])
        starts.append(part)
        agree = (part == whole[share]).float().mean().item()
        assert agree > 0.999, agree  # bit for bit but for sign() of gradients that are 0 up to rounding
    torch.manual_seed(1)
    first = PGD(8 / 255, steps=1, alpha=0.0, seed=None)  # a zero step: the projected random start itself
    torch.manual_seed(1)
    shard0 = PGD(8 / 255, steps=1, alpha=0.0, seed=None, shard=(0, 2))(model, x[:4], y[:4])
    torch.manual_seed(1)
    assert torch.equal(first(model, x, y)[:4], shard0)


def test_pgd_at_jobs_are_reproducible_on_one_node_and_on_two(config_file, tmp_path):
    sets = ["--set", "training.objective=pgd_at", "--set", "model.defense=cas", "--no-progress"]
    for name in ("a", "b"):
        job = torchrun("train", "--config", str(config_file), "--out", str(tmp_path / name), *sets)
        assert job.returncode == 0, job.stderr[-3000:]
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with socket.socket() as s:  # two torchrun "nodes" of one process each, on 127.0.0.1
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = []
    for node in (0, 1):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                    "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "robustact",
                    "train", "--config", str(config_file), "--out", str(tmp_path / "nodes"), *sets]
        nodes.append(subprocess.Popen(launcher, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=os.environ | ENV))
    outs = [p.communicate(timeout=600) for p in nodes]
    assert all(p.returncode == 0 for p in nodes), outs[0][1][-2000:] + outs[1][1][-2000:]
    c = weights(tmp_path / "nodes")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_resume_with_another_number_of_processes(config_file, tmp_path):
    run = tmp_path / "run"
    job = torchrun("train", "--config", str(config_file), "--out", str(run), "--no-progress",
                   "--set", "training.sync_bn=true", "--set", "training.epochs=1")
    assert job.returncode == 0, job.stderr[-3000:]
    stored = yaml.safe_load((run / "config.yaml").read_text())
    stored["training"]["epochs"] = 2  # (the constant lr does not depend on the number of epochs)
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # one process now
    assert main(["train", "--config", str(config_file), "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    assert max_difference(weights(run), weights(tmp_path / "one")) < 2e-4
    job = torchrun("train", "--resume", str(run), "--no-progress")  # a finished run, two processes
    assert job.returncode == 0 and "already finished" in job.stdout


KILL_RANK_1 = r"""
import os, signal, sys, time
from robustact.training.trainer import Trainer
real, real_validate = Trainer.train_epoch, Trainer.validate
def train_epoch(self, epoch):
    if epoch == 1 and self.job.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, epoch)
def validate(self):
    if self.job.rank == 0:
        time.sleep(8)   # a slow validation (a busy machine): rank 1 must not run ahead and die meanwhile
    return real_validate(self)
Trainer.train_epoch, Trainer.validate = train_epoch, validate
from robustact.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_process_stops_the_job_with_one_line_and_the_run_resumes(config_file, tmp_path):
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    run = tmp_path / "run"
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), "train", "--config", str(config_file), "--out", str(run), "--no-progress",
                          "--set", "training.epochs=3"], capture_output=True, text=True, timeout=600,
                         env=os.environ | ENV)
    assert job.returncode != 0
    ours = [line for line in job.stderr.splitlines() if line.startswith("robustact: error:")]
    assert len(ours) == 1 and "resumes from its last complete checkpoint" in ours[0], job.stderr[-3000:]
    assert json.loads((run / "checkpoints" / "last" / "info.json").read_text())["epoch"] == 1
    job = torchrun("train", "--resume", str(run), "--no-progress")
    assert job.returncode == 0, job.stderr[-3000:]
    assert json.loads((run / "checkpoints" / "last" / "info.json").read_text())["epoch"] == 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory, config_file) -> Path:
    run = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train", "--config", str(config_file), "--out", str(run), "--no-progress",
                 "--set", "training.objective=pgd_at", "--set", "training.epochs=1"]) == 0
    return run


def test_a_sharded_evaluation_reports_what_one_process_reports(trained, tmp_path):
    args = ["eval", str(trained), "--attacks", "fgsm,pgd5,cw5", "--num-images", "96", "--batch-size", "2",
            "--sanity-n", "0", "--no-progress", "--cascade", "cw5"]
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    job = torchrun(*args, "--out", str(tmp_path / "two.json"))
    assert job.returncode == 0, job.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert sum(one["per_example"]["clean"]) >= 6  # several batches per attack to share out
    assert one["per_example"] == two["per_example"] and one["cascaded"] == two["cascaded"] == ["cw5"]


def test_a_sharded_evaluation_resumes_a_journal(trained, tmp_path, monkeypatch, capsys):
    from robustact.attacks import registry
    from robustact.evaluation import runner

    make_attack, calls = registry.make_attack, []

    class Interrupting:
        def __init__(self, name, attack):
            self.name, self.attack = name, attack

        def __call__(self, model, x, y):
            calls.append(self.name)
            if self.name == "pgd5" and calls.count("pgd5") == 2:
                raise KeyboardInterrupt
            return self.attack(model, x, y)

        def __repr__(self):
            return repr(self.attack)

    monkeypatch.setattr(runner, "make_attack", lambda name, *a, **k: Interrupting(name, make_attack(name, *a, **k)))
    args = ["eval", str(trained), "--attacks", "fgsm,pgd5", "--num-images", "96", "--batch-size", "2",
            "--sanity-n", "0", "--no-progress"]
    out = tmp_path / "r.json"
    assert main([*args, "--out", str(out)]) == 130
    assert (tmp_path / "r.partial.json").is_file()
    job = torchrun(*args, "--out", str(out))
    assert job.returncode == 0 and "resuming the evaluation" in job.stderr, job.stderr[-3000:]
    monkeypatch.setattr(runner, "make_attack", make_attack)
    assert main([*args, "--out", str(tmp_path / "fresh.json")]) == 0
    resumed, fresh = (json.loads(p.read_text()) for p in (out, tmp_path / "fresh.json"))
    assert resumed["per_example"] == fresh["per_example"]


def test_an_indivisible_global_batch_is_one_line(config_file, tmp_path):
    job = torchrun("train", "--config", str(config_file), "--out", str(tmp_path / "r"), "--set",
                   "data.batch_size=31", nproc=2)
    ours = [line for line in job.stderr.splitlines() if line.startswith("robustact: error:")]
    assert job.returncode != 0 and ours and "must split evenly over the 2 processes" in ours[0]
