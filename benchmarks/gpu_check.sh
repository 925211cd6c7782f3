#!/usr/bin/env bash
# The GPU check of robustact, for the day a GPU is lent (docs/benchmarks.md, "GPU"). About 10 minutes on one
# H100/H200. Prepare on the development machine with `make gpu-prep` (a 32 MiB CIFAR-10 subset in .gpu/ and the
# official AutoAttack's wheel in .whl/, both git-ignored), then on the GPU machine, from the repository root:
#
#     bash benchmarks/gpu_check.sh [OUT]          (the device tool: carry .gpu and .whl)
#
# Needs only python3 with torch (as the GPU image has it): robustact runs from src/ (PYTHONPATH), nothing is
# installed but the carried wheel, into a temporary folder. Writes OUT/gpu_check.md (default $OUT or ./gpu-out).
#
# SMOKE=1 runs every step at toy size on the CPU (resnet_small, 1,024 training images, AutoAttack on 64 images,
# DDP with 2 gloo processes): what tests/test_gpu_check.py does, so that the script works the first time it
# meets a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu-out}}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/robustact-site .whl/*.whl && \
    export PYTHONPATH="$PYTHONPATH:/tmp/robustact-site"
fi
if [ -z "${ROBUSTACT_DATA:-}" ] || [ ! -f "$ROBUSTACT_DATA/cifar-10-batches-py/test_batch" ]; then
  DATA=/tmp/robustact-data/cifar-10-batches-py
  mkdir -p "$DATA" && cp .gpu/data/cifar-10-batches-py/* "$DATA"/
  for i in 2 3 4 5; do cp "$DATA/data_batch_1" "$DATA/data_batch_$i"; done
  export ROBUSTACT_DATA=/tmp/robustact-data
  DATA_NOTE="first 10,000 CIFAR-10 training images, repeated 5x (an epoch of 50,000 for timing); test images 0-999"
else
  DATA_NOTE="CIFAR-10 from $ROBUSTACT_DATA"
fi
R="$PY -m robustact"
if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu ARCHS=resnet_small SETTINGS=fp32,bf16+cl STEPS=1 N_AA=64 BATCH_AA=64 AA_ARCH=resnet_small
  SHRINK=(--set model.arch=resnet_small --set data.train_subset=1024 --set data.val_size=128
          --set training.attack.steps=2)
  NPROC=2
else
  DEVICE=cuda ARCHS=resnet18,wrn34_10 SETTINGS=fp32,bf16+cl,bf16+cl+compile STEPS=5 N_AA=1000 BATCH_AA=1000
  AA_ARCH=resnet18 SHRINK=()
  NPROC=$("$PY" -c "import torch; print(torch.cuda.device_count())")
fi
REPORT="$OUT/gpu_check.md"
{
  echo "# robustact GPU check"
  echo
  echo "- $(date -u +%Y-%m-%dT%H:%MZ); $("$PY" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if c else 'CPU (SMOKE=1)', '|', torch.cuda.device_count(), 'GPU(s)')")"
  echo "- data: $DATA_NOTE"
  echo
  echo "## robustact bench (batch 128, PGD-10; seconds per 50,000-image epoch in the last column)"
  echo
  echo '```'
  $R bench --archs "$ARCHS" --settings "$SETTINGS" --steps "$STEPS" --device "$DEVICE" 2>&1 | grep -v Warning
  echo '```'
} > "$REPORT"
cat "$REPORT"

run="$OUT/run"
rm -rf "$run"
start=$(date +%s.%N)
$R train --preset pgd-at-resnet18-cifar10 --out "$run" --no-progress --device "$DEVICE" \
  --set training.epochs=1 --set training.amp=bf16 --set training.channels_last=true "${SHRINK[@]}" \
  > "$OUT/train.log" 2>&1
train_wall=$("$PY" -c "print($(date +%s.%N) - $start)")
epoch_s=$("$PY" -c "import json; print(round(json.loads(open('$run/metrics.jsonl').readline())['epoch_seconds'], 2))" 2>/dev/null || echo "failed (see train.log)")

start=$(date +%s.%N)
$R eval "$run" --which last --attacks aa --n "$N_AA" --sanity-n 0 --no-progress --device "$DEVICE" \
  --batch-size "$BATCH_AA" \
  --out "$OUT/aa.json" > "$OUT/aa.log" 2>&1
aa_wall=$("$PY" -c "print($(date +%s.%N) - $start)")
aa_acc=$("$PY" -c "import json; a=json.load(open('$OUT/aa.json'))['accuracy']; print(f\"{100*a['clean']:.1f} / {100*a['worst_case']:.1f}\")" 2>/dev/null || echo "failed")
"$PY" benchmarks/bench_autoattack.py --n "$N_AA" --arch "$AA_ARCH" --device "$DEVICE" --batch-size "$BATCH_AA" \
  --checkpoint "$run/checkpoints/last/model.safetensors" > "$OUT/aa_vs_official.log" 2>&1

{
  echo
  echo "## One epoch of pgd-at-resnet18-cifar10 (PGD-10, batch 128, bf16 + channels_last)"
  echo
  echo "| what | seconds |"
  echo "|---|---:|"
  echo "| training epoch (metrics.jsonl epoch_seconds) | $epoch_s |"
  echo "| the whole command (data, validation, checkpoint) | $(printf %.1f "$train_wall") |"
  echo
  echo "## AutoAttack standard, test images 0-$((N_AA - 1)), that model"
  echo
  echo "robustact eval: clean / robust accuracy $aa_acc %, $(printf %.1f "$aa_wall") s (the whole command)."
  echo
  echo '```'
  tail -n 8 "$OUT/aa_vs_official.log"
  echo '```'
} >> "$REPORT"

if [ "$NPROC" -gt 1 ]; then
  start=$(date +%s.%N)
  "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m robustact train \
    --preset pgd-at-resnet18-cifar10 --out "$OUT/ddp" --no-progress --device "$DEVICE" --set training.epochs=1 \
    --set training.amp=bf16 --set training.channels_last=true --set training.sync_bn=true "${SHRINK[@]}" \
    > "$OUT/ddp.log" 2>&1
  ddp_s=$("$PY" -c "import json; print(round(json.loads(open('$OUT/ddp/metrics.jsonl').readline())['epoch_seconds'], 2))" 2>/dev/null || echo "failed")
  printf '\n## DDP on %s processes\n\nOne epoch, same preset and settings, sync_bn: %s s (one process: %s s).\n' \
    "$NPROC" "$ddp_s" "$epoch_s" >> "$REPORT"
fi
cat "$REPORT"
