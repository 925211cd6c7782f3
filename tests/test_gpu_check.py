"""benchmarks/gpu_check.sh end to end at toy size on the CPU (SMOKE=1): the script that will meet a GPU with a
15-minute budget must not fail on a typo the first time. Every section must produce numbers, not "failed"."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (Path(os.environ.get("ROBUSTACT_DATA", "")) / "cifar-10-batches-py").is_dir(),
                    reason="needs CIFAR-10 under ROBUSTACT_DATA")
def test_gpu_check_script_runs_every_section_in_smoke_mode(tmp_path):
    pytest.importorskip("pyautoattack")  # the official implementation, for the side-by-side section
    env = os.environ | {"SMOKE": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "failed" not in report, report
    assert re.search(r"resnet_small fp32 +[\d,.]+ +[\d,.]+ +[\d,.]+ +[\d,.]+", report), report
    assert re.search(r"resnet_small bf16\+cl +[\d,.]+", report), report
    assert re.search(r"\| training epoch \(metrics.jsonl epoch_seconds\) \| [\d.]+ \|", report), report
    assert re.search(r"clean / robust accuracy [\d.]+ / [\d.]+ %", report), report
    assert re.search(r"^robustact +[\d.]+ +[\d.]+ +[\d.]+% +[\d.]+%", report, re.M), report
    assert re.search(r"^official +[\d.]+ +[\d.]+ +[\d.]+% +[\d.]+%", report, re.M), report
    assert re.search(r"DDP on 2 processes\n\nOne epoch, same preset and settings, sync_bn: [\d.]+ s", report), report
