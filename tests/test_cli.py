"""The command line: bad input gets one clear line and exit status 2; eval writes its reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import autoattack_checkpoint, requires_cifar

from robustact import build_model
from robustact.checkpoints import save_weights


def run_cli(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = os.environ.copy() | (env or {})
    return subprocess.run([sys.executable, "-m", "robustact.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    save_weights(build_model("resnet_small"), path)
    return path


def test_missing_data_directory(tmp_path):
    proc = run_cli("train", "--preset", "demo", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "nope"))
    assert_one_line_error(proc, "cifar-10-batches-py", "ROBUSTACT_DATA")


def test_wrong_layout(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle")
    proc = run_cli("train", "--preset", "demo", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"))
    assert_one_line_error(proc, "data_batch")


def test_eps_out_of_range(small_checkpoint):
    proc = run_cli("eval", str(small_checkpoint), "--eps", "8", "--n", "10")
    assert_one_line_error(proc, "8/255")


def test_unknown_arch(tmp_path):
    proc = run_cli("train", "--preset", "demo", "--out", str(tmp_path / "run"), "--set", "model.arch=resnet1000")
    assert_one_line_error(proc, "unknown arch", "resnet18")


def test_unknown_preset(tmp_path):
    proc = run_cli("train", "--preset", "no-such-recipe", "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "unknown preset", "demo")


def test_unknown_override_key(tmp_path):
    proc = run_cli("train", "--preset", "demo", "--out", str(tmp_path / "run"), "--set", "training.epochz=3")
    assert_one_line_error(proc, "epochz", "epochs")


def test_unknown_attack(small_checkpoint):
    proc = run_cli("eval", str(small_checkpoint), "--attacks", "pgd20,deepfool9", "--n", "10")
    assert_one_line_error(proc, "deepfool9")


def test_checkpoint_of_another_architecture(small_checkpoint, tmp_path):
    proc = run_cli("eval", str(small_checkpoint), "--arch", "resnet18", "--n", "10")
    assert_one_line_error(proc, "resnet_small", "resnet18")
    foreign = tmp_path / "foreign.pt"
    torch.save(build_model("resnet_small").state_dict(), foreign)
    proc = run_cli("eval", str(foreign), "--arch", "resnet18", "--n", "10")
    assert_one_line_error(proc, "does not fit", "resnet18")


def test_pickled_object_is_refused(tmp_path):
    bad = tmp_path / "model.pt"
    torch.save(build_model("resnet_small"), bad)  # a whole pickled module, not a state_dict
    proc = run_cli("eval", str(bad), "--arch", "resnet_small", "--n", "10")
    assert_one_line_error(proc, "weights_only")


def test_resume_of_a_non_run(tmp_path):
    proc = run_cli("train", "--resume", str(tmp_path))
    assert_one_line_error(proc, "not a run directory")


@requires_cifar
def test_eval_of_a_foreign_checkpoint_writes_reports(tmp_path):
    path = autoattack_checkpoint()
    if path is None:
        pytest.skip("pyautoattack not installed")
    out = tmp_path / "report.json"
    proc = run_cli("eval", str(path), "--arch", "resnet18", "--attacks", "fgsm", "--n", "20", "--out", str(out),
                   "--no-progress", "--sanity-n", "0")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 20 and set(report["accuracy"]) == {"clean", "fgsm", "worst_case"}
    assert len(report["per_example"]["fgsm"]) == 20
    assert report["accuracy"]["clean"] >= 0.9
    assert out.with_suffix(".md").is_file()
    assert "fgsm" in proc.stdout and "clean" in proc.stdout


@requires_cifar
def test_eval_reports_sanity_flags(small_checkpoint, tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli("eval", str(small_checkpoint), "--attacks", "fgsm,pgd5", "--n", "16", "--sanity-n", "16",
                   "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    sanity = json.loads(out.read_text())["sanity"]
    names = {f["name"] for f in sanity}
    assert {"zero_or_nan_gradients", "randomized_forward"} <= names, names
    assert all(isinstance(f["fired"], bool) and f["n"] == 16 for f in sanity)
    assert "sanity checks:" in proc.stdout and "## Sanity checks" in out.with_suffix(".md").read_text()


def test_info_runs():
    proc = run_cli("info")
    assert proc.returncode == 0 and "torch" in proc.stdout and "resnet_small" in proc.stdout


@requires_cifar
def test_paper_protocol_on_a_baseline_with_only_and_cascade(small_checkpoint, tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli("eval", str(small_checkpoint), "--suite", "paper", "--protocol", "cas", "--only", "pgd20,fgsm",
                   "--cascade", "pgd20", "--n", "12", "--sanity-n", "0", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert list(report["attacks"]) == ["fgsm", "pgd20"]  # the suite's order, not the flag's
    assert "alpha=0.003" in report["attacks"]["pgd20"] and report["cascaded"] == ["pgd20"]  # the step, from repr
    assert "cascaded" in proc.stdout


@pytest.mark.parametrize("flags, fragments", [
    (["--suite", "paper", "--protocol", "nope"], ["unknown protocol", "cas"]),
    (["--suite", "adaptive", "--protocol", "cas"], ["--protocol applies to --suite paper"]),
    (["--suite", "paper", "--protocol", "cas", "--suite-opt", "steps"], ["KEY=VALUE"]),
    (["--suite", "paper", "--protocol", "cas", "--suite-opt", "steps=5"], ["no option 'steps'"]),
    (["--suite", "paper", "--protocol", "cas", "--only", "pgd99"], ["--only", "pgd99", "cw20"]),
    (["--attacks", "fgsm", "--cascade", "pgd20"], ["--cascade", "pgd20"]),
    (["--attacks", "fgsm", "--only", "fgsm"], ["go with --suite"]),
    (["--suite", "paper"], ["not defined for defense 'none'", "--protocol"]),
])
def test_suite_flag_errors(small_checkpoint, flags, fragments):
    assert_one_line_error(run_cli("eval", str(small_checkpoint), "--n", "4", *flags), *fragments)


@requires_cifar
def test_an_interrupted_eval_resumes_from_its_journal(tmp_path, monkeypatch, capsys):
    from robustact.attacks import registry
    from robustact.cli import main
    from robustact.evaluation import runner

    torch.manual_seed(0)  # this untrained model gets 6 of the first 64 test images right: 6 batches per attack
    small_checkpoint = tmp_path / "seeded.safetensors"
    save_weights(build_model("resnet_small"), small_checkpoint)

    make_attack, calls, interrupt = registry.make_attack, [], [True]

    class Counting:  # counts its batches; Ctrl-C during the third batch of pgd5 while `interrupt[0]`
        def __init__(self, name, attack):
            self.name, self.attack = name, attack

        def __call__(self, model, x, y):
            calls.append(self.name)
            if interrupt[0] and calls.count("pgd5") == 3:
                raise KeyboardInterrupt
            return self.attack(model, x, y)

        def __repr__(self):
            return repr(self.attack)

    monkeypatch.setattr(runner, "make_attack", lambda name, *a, **k: Counting(name, make_attack(name, *a, **k)))
    common = ["eval", str(small_checkpoint), "--attacks", "fgsm,pgd5", "--n", "64", "--batch-size", "1",
              "--sanity-n", "0", "--no-progress"]
    out, reference = tmp_path / "r.json", tmp_path / "reference.json"
    assert main([*common, "--out", str(out)]) == 130
    assert "run again with the same command" in capsys.readouterr().err
    saved = json.loads((tmp_path / "r.partial.json").read_text())["attacks"]
    assert saved["fgsm"]["batches"] == saved["fgsm"]["total"] == 6
    assert saved["pgd5"]["batches"] == 2 and saved["pgd5"]["total"] == 6
    calls.clear()
    interrupt[0] = False
    assert main([*common, "--out", str(out)]) == 0
    assert "resuming the evaluation" in capsys.readouterr().err
    assert calls == ["pgd5"] * 4  # only what was left: fgsm done, pgd5's batches 3-6
    assert not (tmp_path / "r.partial.json").exists()
    assert main([*common, "--out", str(reference)]) == 0
    resumed, fresh = json.loads(out.read_text()), json.loads(reference.read_text())
    assert resumed["per_example"] == fresh["per_example"]
    cheap = ["eval", str(small_checkpoint), "--attacks", "fgsm", "--n", "8", "--sanity-n", "0", "--out", str(out)]
    assert main(cheap) == 2  # the finished report of another evaluation is not silently replaced ...
    assert "holds the report of another evaluation" in capsys.readouterr().err
    assert main([*cheap, "--overwrite"]) == 0  # ... unless asked to; no journal was left behind
    (tmp_path / "r.partial.json").write_text(json.dumps({"settings": {"eps": 1}, "attacks": {}}))
    assert_one_line_error(run_cli(*cheap), "other settings", "--restart")
    assert main([*cheap, "--restart"]) == 0


def test_bench_with_activations():
    proc = run_cli("bench", "--archs", "resnet_small", "--activations", "relu,sparta", "--steps", "1",
                   "--batch-size", "4", "--pgd-steps", "1", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("resnet_small/")]
    assert [r[:2] for r in rows] == [["resnet_small/relu", "fp32"], ["resnet_small/sparta", "fp32"]]
    assert all(float(v.replace(",", "")) > 0 for r in rows for v in r[2:6])
    assert_one_line_error(run_cli("bench", "--activations", "relu,swish2"), "unknown activation 'swish2'", "sparta")


@requires_cifar
def test_sanity_command_reads_per_example_results_of_reports(small_checkpoint, tmp_path):
    """`robustact sanity RUN REPORT...` (was `python -m robustact.evaluation.protocols.cas sanity`): the
    comparisons of FGSM with PGD use the reports' per-example results on their shared images."""
    from robustact.cli import main

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["eval", str(small_checkpoint), "--attacks", "fgsm", "--n", "12", "--sanity-n", "0", "--out",
                 str(a), "--no-progress"]) == 0
    assert main(["eval", str(small_checkpoint), "--attacks", "pgd5", "--n", "8", "--sanity-n", "0", "--out",
                 str(b), "--no-progress"]) == 0
    flags_path = tmp_path / "flags.json"
    assert main(["sanity", str(small_checkpoint), str(a), str(b), "--out", str(flags_path)]) == 0
    flags = {f["name"]: f for f in json.loads(flags_path.read_text())}
    assert {"zero_or_nan_gradients", "randomized_forward", "large_eps_accuracy", "fgsm_beats_pgd"} <= set(flags)
    assert "pgd5" in flags["fgsm_beats_pgd"]["message"]  # compared with the report's PGD, not one of its own
    assert_one_line_error(run_cli("sanity", str(small_checkpoint), str(tmp_path / "none.json")), "no report")
