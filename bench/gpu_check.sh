#!/usr/bin/env bash
# The GPU path, checked in one go on one GPU (issue 23, point 5); under 8 minutes on an H100.
#
#   bash bench/gpu_check.sh            # on a machine with CUDA, from the repository root
#   bash bench/gpu_check.sh --cpu      # the same steps on the CPU at the tiny host (a dry run)
#
# 1. the CUDA-marked tests (tests/engine/test_cuda.py);
# 2. 4 envs at host.preset=base on the device with --amp bf16, then --amp fp16: an uninterrupted
#    run, and the same run killed with kill -9 after 2 of its 4 epochs and resumed with --resume;
#    the two recordings must hold the same events (timing fields aside);
# 3. samples/s of 1, 2, 4, 8 envs at base on the device against one bare PyTorch loop, with
#    peak device memory (bench/_gpu.py throughput), for the CNN and the Transformer.
#
# It uses the machine's own torch (python3) and needs msgspec beside it: where it is missing,
# carry the wheel in .whl/ (bench/README.md says how) and this script installs it to /tmp/site.
# Textual is not needed: the runs are --headless. Results go to $OUT (or /tmp/gpu_check): the
# log, the recordings' comparison and throughput.json. The exit code is the number of failed
# steps.
set -uo pipefail

MODE=${1:-gpu}
OUT=${OUT:-/tmp/gpu_check}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

if [ "$MODE" = "--cpu" ]; then
    DEVICE=cpu PRESET=tiny BATCHES=6 TASKS=synthetic-images ENVS=1,2,4
else
    DEVICE=cuda PRESET=base BATCHES=30 TASKS=synthetic-images,synthetic-stories ENVS=1,2,4,8
fi
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 99
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XDG_STATE_HOME=$WORK/state
FAILED=0
step() { echo; echo "=== $* ($(date +%T))"; }
fail() { echo "FAILED: $*"; FAILED=$((FAILED + 1)); }

step "machine"
"$PY" - <<'EOF' || exit 98
import torch, msgspec
print("torch", torch.__version__, "msgspec", msgspec.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.0f} GiB", "bf16", torch.cuda.is_bf16_supported())
else:
    print("no CUDA: CPU only")
EOF
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi

step "1. CUDA-marked tests"
if [ "$DEVICE" = cuda ]; then
    timeout 150 "$PY" -m pytest -m cuda tests/engine/test_cuda.py -q -p no:cacheprovider \
        || fail "CUDA-marked tests"
else
    echo "skipped on the CPU (they need CUDA)"
fi

step "2. 4 envs at $PRESET on $DEVICE: amp bf16 and fp16, kill -9 and --resume"
run_args=(run --headless --task synthetic-images --n-envs 4 --episodes 1 --epochs 4
          --batches-per-epoch "$BATCHES" --device "$DEVICE" --set "host.preset=$PRESET")
for amp in bf16 fp16; do
    ref=$WORK/ref-$amp.msgpack cut=$WORK/cut-$amp.msgpack
    start=$SECONDS
    timeout 120 "$PY" -m overwatch.cli "${run_args[@]}" --amp "$amp" --record "$ref" \
        >"$WORK/ref-$amp.log" 2>&1 || { fail "amp $amp run"; tail -5 "$WORK/ref-$amp.log"; continue; }
    head -3 "$WORK/ref-$amp.log" | tail -1
    echo "amp $amp: uninterrupted run $((SECONDS - start)) s"
    "$PY" -m overwatch.cli "${run_args[@]}" --amp "$amp" --record "$cut" >"$WORK/cut-$amp.log" 2>&1 &
    pid=$!
    if "$PY" bench/_gpu.py wait "$cut" 8 --timeout 90; then  # 2 epochs x 4 envs summarised
        kill -9 "$pid"
    else
        fail "amp $amp: the run to cut did not reach 2 epochs"; kill -9 "$pid"
    fi
    wait "$pid" 2>/dev/null
    timeout 120 "$PY" -m overwatch.cli run --resume "$cut" --headless >"$WORK/resume-$amp.log" 2>&1 \
        || { fail "amp $amp --resume"; tail -5 "$WORK/resume-$amp.log"; continue; }
    "$PY" bench/_gpu.py compare "$ref" "$cut" | tee "$OUT/compare-$amp.txt" \
        || fail "amp $amp: resumed events differ from the uninterrupted run's"
done

step "3. samples/s of $ENVS envs at $PRESET on $DEVICE against a bare loop"
timeout 300 "$PY" bench/_gpu.py throughput --device "$DEVICE" --preset "$PRESET" --envs "$ENVS" \
    --tasks "$TASKS" --json "$OUT/throughput.json" || fail "throughput"

step "done: $FAILED failed step(s); log and figures in $OUT"
exit "$FAILED"
