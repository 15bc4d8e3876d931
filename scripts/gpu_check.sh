#!/usr/bin/env bash
# The GPU check in one script: OLMoE-1B-7B shapes, bf16, random weights; R, E, D and S against the frozen
# model. Stages in order of worth, each with its own time limit, each writing its own JSON and appending to
# one log, so a stage cut off by its limit loses only itself:
#   train      the training step (batch 16 x 256) and each case's peak memory
#   generate   eager generate() at batch 1 and 64, prefill and decode, and one block's decode parts, each
#              of E's paths forced; E_fused_r16 decodes with E inside the frozen experts (slower on CPU)
#   compiled_generate   E against the frozen model, decode steps compiled over a static cache (CUDA graphs)
#   compiled_steps      E against the frozen model, the torch.compile'd training step
#   train_4bit (only when named) R and E on the base loaded in 4 bits (the fused experts too), against the
#              4-bit frozen step and the bf16 one, with peak memory; needs bitsandbytes, and each of its
#              processes saves and reloads the 7B model, so give it a lease of its own
#   rank_split (only when named) R and E at rank 16 and at rank 1, eager decoding and the training step:
#              how much of each one's cost is its rank and how much is per call (kernel launches); and
#              each one's training step under torch.profiler against S's: the kernels its extra time is in
#
#   bash scripts/gpu_check.sh [OUT_DIR] [SECONDS] [STAGE ...]   # default outputs/bench/cuda, 570 s, the four
#
# On one H200 (2026-12-04) the stages took 123, 115, 170 and about 100 s (8 training rounds, no
# E_fused_r16 then); the results, with the commands,
# are in docs/benchmarks.md ("CUDA") and docs/results/cuda_h200_2026-12-04/.
#
# Needs a CUDA build of torch and this project's Python dependencies (docs/benchmarks.md, "CUDA", says which
# wheels a bare GPU image lacks, bitsandbytes for train_4bit among them); runs from the repository root
# without installing the project.
set -u
out=${1:-outputs/bench/cuda}
budget=${2:-570}
shift $(($# < 2 ? $# : 2))
stages=" ${*:-train generate compiled_generate compiled_steps} "
mkdir -p "$out"
log="$out/gpu_check.log"
deadline=$((SECONDS + budget))
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}   # DEVICE=cpu: a dry run of the script on the CPU miniature

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
    "$py" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee -a "$log"

stage() {  # stage NAME CAP_SECONDS bench-arguments...
    local name=$1 cap=$2 left=$((deadline - SECONDS))
    shift 2
    local limit=$((cap < left ? cap : left))
    [[ $stages == *" $name "* ]] || return 0
    if ((limit < 30)); then
        echo "== $name: skipped, $left s left" | tee -a "$log"
        return
    fi
    echo "== $name (limit $limit s): scripts/bench.py --device $device $*" | tee -a "$log"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$py" scripts/bench.py --device "$device" "$@" --json "$out/$name.json" 2>&1 \
        | tee -a "$log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$log"
}

all=(R_top2of4_r16 E_r16 D4_r16 S_r16)
stage train 140 --cases "${all[@]}" --rounds 6 --warmup 2
stage generate 150 --cases "${all[@]}" E_fused_r16 --generate --no-memory --rounds 3 --warmup 1
stage compiled_generate 190 --cases E_r16 --generate --compile generation --no-memory --rounds 2 --warmup 1
stage compiled_steps 150 --cases E_r16 --compile steps --no-memory --rounds 5 --warmup 1
stage train_4bit 560 --base 4bit --cases R_top2of4_r16 E_r16 --rounds 4 --warmup 1
stage rank_split 230 --cases R_top2of4_r16 R_top2of4_r1 E_r16 E_r1 --generate --no-memory --rounds 3 --warmup 1 --profile S_r16
