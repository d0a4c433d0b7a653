#!/usr/bin/env bash
# Issue 16's GPU checks as one command for a CUDA machine (the `device` tool's run):
#
#   bash scripts/gpu_checks.sh OUT_DIR [extra wsss-bench run flags]
#
# 1. the CUDA tests: tests/test_gpu_path.py (its CUDA-only test runs where a GPU is);
# 2. the synthetic paper grid (configs/paper-grid-synthetic.toml: 47,232 slices of 128×128,
#    3 folds × resnet34 + resnet50 × gradcam × and/or/</> × 2 filters, 10 epochs) on cuda,
#    timed end to end; the run's last line gives each stage's time and share.
# Everything goes to OUT_DIR: nvidia-smi, the test log, the run log, the board's JSON and
# markdown. Extra flags go to the run (e.g. `-o phantom.n_cases=6 --epochs 1 --device cpu`
# for a dry run of this script on a CPU). Exit status: the first failing step's.
set -uo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR [wsss-bench run flags]}
shift
mkdir -p "$out" && out=$(cd "$out" && pwd)  # absolute: the script moves to the repository
cd "$(dirname "$0")/.."
status=0
fail() { [ "$status" -eq 0 ] && status=$1; }
(nvidia-smi || echo "no nvidia-smi") > "$out/nvidia-smi.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" \
    | tee "$out/torch.txt"
PYTHONUNBUFFERED=1 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_path.py \
    > "$out/cuda-tests.log" 2>&1 || fail $?
tail -3 "$out/cuda-tests.log"
start=$(date +%s.%N)
PYTHONUNBUFFERED=1 python3 -m wsss_bench.cli run --config configs/paper-grid-synthetic.toml \
    --device cuda --workdir "$out/units" --leaderboard-dir "$out/boards" --no-figures "$@" \
    > "$out/grid.log" 2>&1 || fail $?
end=$(date +%s.%N)
echo "grid wall seconds: $(python3 -c "print(round($end - $start, 1))")" | tee -a "$out/grid.log"
grep "^time:" "$out/grid.log" || tail -5 "$out/grid.log"
rm -rf "$out/units"  # CAMs of 47,232 slices: gigabytes that need not come back
exit "$status"
