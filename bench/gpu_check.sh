#!/usr/bin/env bash
# Run ON THE DEVICE MACHINE (carry bench/.gpu, made by bench/gpu_prep.sh): installs what the image lacks, then runs
# the GPU benchmark (SD1.5- and SDXL-shaped UNets, random fp16 weights) inside a time budget. Whole script < 6 min:
# about 40 s of start-up and model building, BENCH_BUDGET_S (default 270 s) of measuring, one case's overrun at most.
# Results: $OUT/gpu.md and $OUT/gpu.log (the device tool brings $OUT back), else bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
G=bench/.gpu
DEST=${OUT:-bench/results}
BUDGET=${BENCH_BUDGET_S:-270}
[ -f "$G/ComfyUI.tar.gz" ] || { echo "gpu_check: $G/ComfyUI.tar.gz is missing: run bench/gpu_prep.sh on the dev machine and carry bench/.gpu"; exit 2; }
mkdir -p /tmp/memsafe-comfy "$DEST"
tar -xzf "$G/ComfyUI.tar.gz" -C /tmp/memsafe-comfy || exit 2
export COMFYUI_PATH=/tmp/memsafe-comfy/ComfyUI PYTHONUNBUFFERED=1
need=()
for mod in av torchsde trampoline; do
    "$PY" -c "import $mod" 2>/dev/null || need+=("$G"/whl/"$mod"-*.whl)
done
if [ ${#need[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/memsafe-site "${need[@]}" || exit 2
    export PYTHONPATH=/tmp/memsafe-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | tee "$DEST/gpu.log"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$DEST/gpu.log"
timeout -k 10 $((BUDGET + 75)) "$PY" bench/run.py --device cuda --budget-s "$BUDGET" --out "$DEST/gpu.md" "$@" 2>&1 | tee -a "$DEST/gpu.log"
rc=${PIPESTATUS[0]}
echo "gpu_check: bench exit status $rc (124: stopped by the time limit; the table holds every finished case)" | tee -a "$DEST/gpu.log"
exit "$rc"
