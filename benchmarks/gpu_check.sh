#!/usr/bin/env bash
# GPU readiness in under 5 minutes: on one CUDA device, calibrate (progressive, W8A8) and sample the
# tiny SD pipeline and the SD 1.5- and SDXL-shaped ones (real UNet configs, random weights; see
# benchmarks/sd_scale.py) in float16, and print their time ratios and peak GPU memory
# (torch.cuda.max_memory_allocated, reset between measurements).
#
# From the repository root, with the project's .venv (make run or make test creates it):
#   bash benchmarks/gpu_check.sh              # CUDA: tiny; SD 1.5 at 512 px; SDXL at 768 px if time is left
#   bash benchmarks/gpu_check.sh --no-sdxl    # without SDXL
#   bash benchmarks/gpu_check.sh --cpu-smoke  # the same steps on the CPU: tiny model, float32, 2 steps
# PYTHON=/path/to/python overrides the interpreter. Results: benchmarks/results/gpu_check*.json.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUDGET=300  # seconds, for the whole script
SDXL=1
SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) SMOKE=1 ;;
        --no-sdxl) SDXL=0 ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--cpu-smoke] [--no-sdxl]" >&2; exit 2 ;;
    esac
done
if [[ ! -x "$PYTHON" ]]; then
    echo "no interpreter at $PYTHON: run 'make test' (or 'make run') once to create .venv, or set PYTHON" >&2
    exit 2
fi

# Runs sd_scale.py for one model within what is left of the budget; a run cut short says so.
run_model() {
    local model=$1; shift
    local left=$((BUDGET - SECONDS))
    if ((left < 30)); then
        echo "== $model: not run, ${left} s of the ${BUDGET} s budget left"
        return 0
    fi
    echo "== $model ($* ; ${left} s of the budget left)"
    local status=0
    timeout --kill-after=10 "$left" "$PYTHON" benchmarks/sd_scale.py --model "$model" "$@" \
        --out "$OUT_JSON" || status=$?
    if ((status == 124 || status == 137)); then
        echo "== $model: stopped at the ${BUDGET} s budget; its figures are missing"
    elif ((status != 0)); then
        echo "== $model: sd_scale.py failed with exit code $status" >&2
        return "$status"
    fi
}

if ((SMOKE)); then
    OUT_JSON=benchmarks/results/gpu_check_cpu_smoke.json
    rm -f "$OUT_JSON"  # sd_scale.py merges into it; this run's figures only
    echo "== CPU smoke run (no GPU used): $(uname -m), $(nproc) CPUs"
    run_model tiny --device cpu --dtype float32 --steps 2 --prompts 2 --batch 2 --threads 1
else
    if ! command -v nvidia-smi >/dev/null; then
        echo "nvidia-smi not found: this check needs an NVIDIA GPU (try --cpu-smoke)" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv,noheader
    "$PYTHON" -c "import torch, sys; ok = torch.cuda.is_available(); \
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, device:', torch.cuda.get_device_name() if ok else None); \
sys.exit(0 if ok else 'torch sees no CUDA device')"
    OUT_JSON=benchmarks/results/gpu_check.json
    rm -f "$OUT_JSON"
    COMMON=(--device cuda --dtype float16 --steps 10 --prompts 8 --batch 4)
    run_model tiny "${COMMON[@]}"
    run_model sd15 "${COMMON[@]}" --latent 64   # 512 x 512 images
    if ((SDXL)); then
        run_model sdxl "${COMMON[@]}" --latent 96   # 768 x 768 images
    fi
fi

# One line per model: the time ratios and the peak memory (GPU's on CUDA, the resident set's on CPU).
"$PYTHON" - "$OUT_JSON" <<'EOF'
import json
import sys

print("\n== summary (" + sys.argv[1] + ")")
for key, result in json.load(open(sys.argv[1])).items():
    goals = {name.split(" (goal")[0]: value for name, value in result["ratios"].items() if "(goal" in name}
    peaks = {name: round(m["peak_mb"]) for name, m in result["memory_mb"].items() if m}
    print(f"{key}: {goals}; peak memory MB {peaks}; params file {result['params_file_mb']} MB")
    for name, reason in result["not_measured"].items():
        print(f"  not measured: {name}: {reason}")
EOF
echo "== ${SECONDS} s in all"
