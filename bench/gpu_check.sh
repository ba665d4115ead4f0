#!/usr/bin/env bash
# The GPU check (issue 19), at most 8 minutes on one GPU, run from anywhere:
#   (a) the tests marked cuda (they skip without CUDA elsewhere),
#   (b) bench/throughput.py --device cuda --compile (AMP, channels_last, resident uint8 data, torch.compile),
#   (c) 2 epochs of every assignment variant through its own script on the real data,
#   (d) bench/results/<gpu>-<date>.json and .md (bench/gpu_collect.py).
#
# Examples:
#   bench/gpu_check.sh
#   DATA_DIR=/data/raw-img MOBILENET_WEIGHTS=/w/mobilenet_v2.pth RESNET_WEIGHTS=/w/resnet18.pth bench/gpu_check.sh
#   RESULTS_DIR=$OUT LOG_DIR=$OUT/logs bench/gpu_check.sh      # results and logs somewhere else
#
# Environment: DATA_DIR (default ../shared/data/animals10/raw-img, relative to the repository root),
# MOBILENET_WEIGHTS (default ../shared/weights/mobilenet_v2-4972ace1.pth when it exists, else imagenet),
# RESNET_WEIGHTS (default imagenet); weights that do not resolve are replaced by 'none' with a note, as
# only speed is checked here. PYTHON (default .venv/bin/python when present, else python3), GPU_BATCH
# (default 256), WORK (default a new temp folder; its runs/ is deleted at the end unless KEEP_RUNS=1),
# LOG_DIR (default $WORK/logs), RESULTS_DIR (default bench/results).
# Every step has a time limit inside one 8-minute budget; a failed, timed-out or skipped step is recorded
# and the next one runs; the exit code is 1 when any step did not pass.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! GPU=$("$PYTHON" -c 'import sys, torch
sys.exit(1) if not torch.cuda.is_available() else print(torch.cuda.get_device_name(0))' 2>/dev/null); then
    echo "error: no CUDA device is visible to $PYTHON (torch.cuda.is_available() is false); run bench/gpu_check.sh" \
         "on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
    exit 1
fi
DATA_DIR=${DATA_DIR:-../shared/data/animals10/raw-img}
if [[ ! -d "$DATA_DIR" ]]; then
    echo "error: no data folder at $DATA_DIR; set DATA_DIR to the Animals-10 raw-img folder" >&2
    exit 1
fi

BUDGET=450          # seconds from the script's start; 8 minutes less the steps' kill grace (2 s each)
REPORT_RESERVE=20   # kept back for the report step
WORK=${WORK:-$(mktemp -d -t gpu-check-XXXXXX)}
LOG_DIR=${LOG_DIR:-$WORK/logs}
RESULTS_DIR=${RESULTS_DIR:-bench/results}
GPU_BATCH=${GPU_BATCH:-256}
mkdir -p "$WORK/runs" "$WORK/throughput" "$LOG_DIR"
: > "$WORK/steps.tsv"
NOTES=()
FAILED=0

# step NAME SECONDS COMMAND...: run with a time limit (never past the budget), log to $LOG_DIR/NAME.log, record it.
step() {
    local name=$1 limit=$2 rc=0 status=ok t0=$SECONDS
    shift 2
    local left=$((BUDGET - REPORT_RESERVE - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit <= 0)); then
        status=skipped
        echo "out of time budget" > "$LOG_DIR/$name.log"
    else
        timeout --kill-after=2 "$limit" "$@" > "$LOG_DIR/$name.log" 2>&1 || rc=$?
        if ((rc == 124 || rc == 137)); then status="timed out (${limit}s)"; elif ((rc != 0)); then status=failed; fi
    fi
    [[ $status == ok ]] || FAILED=1
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$rc" >> "$WORK/steps.tsv"
    printf '[%3ds] %-22s %s (%ss)\n' "$SECONDS" "$name" "$status" "$((SECONDS - t0))"
    [[ $status == ok ]] || tail -n 5 "$LOG_DIR/$name.log" | sed 's/^/    /'
}

# resolve VAR ARCH WEIGHTS: VAR = the weights when they resolve, else none (the speed check still runs), noted.
resolve() {
    local var=$1 arch=$2 given=$3 got
    got=$(timeout 20 "$PYTHON" -c 'import sys; sys.path.insert(0, "bench")
from time_to_accuracy import resolve_weights
w, why = resolve_weights(sys.argv[1], sys.argv[2]); print(w); print(why or "", file=sys.stderr)' \
        "$arch" "$given" 2> "$LOG_DIR/weights-$arch.log") || got=none
    got=${got##*$'\n'}  # the last line: torch.hub prints "Downloading: ..." on stdout before it fails
    if [[ $got == none ]]; then
        local why
        why=$(tail -n 1 "$LOG_DIR/weights-$arch.log" || true)
        NOTES+=("$arch: weights '$given' did not resolve (${why:-no reason given}); trained with --weights none")
    fi
    printf -v "$var" '%s' "$got"
}

echo "GPU check on $GPU; data $DATA_DIR; work folder $WORK"
DEFAULT_MNV2=../shared/weights/mobilenet_v2-4972ace1.pth
[[ -f $DEFAULT_MNV2 ]] || DEFAULT_MNV2=imagenet
resolve MNV2 mobilenet_v2 "${MOBILENET_WEIGHTS:-$DEFAULT_MNV2}"
resolve R18 resnet18 "${RESNET_WEIGHTS:-imagenet}"

step cuda-tests 60 "$PYTHON" -m pytest -q -m cuda tests

COMMON=(--data-dir "$DATA_DIR" --output-dir "$WORK/runs" --epochs 2 --batch-size "$GPU_BATCH" --device cuda
        --monitor-test --tag gpucheck)
# The first run draws the split and decodes the pixel cache, which every later step reuses.
step scratch_cnn-full 80 "$PYTHON" part1_scratch_cnn.py "${COMMON[@]}"
step mobilenet_v2-fc 35 "$PYTHON" part2_mobilenet.py --mode fc --weights "$MNV2" "${COMMON[@]}"
step mobilenet_v2-full 35 "$PYTHON" part2_mobilenet.py --mode full --weights "$MNV2" "${COMMON[@]}"
step resnet18-fc 35 "$PYTHON" part2_resnet18.py --mode fc --weights "$R18" "${COMMON[@]}"
step resnet18-blocks34 35 "$PYTHON" part2_resnet18.py --mode blocks34 --weights "$R18" "${COMMON[@]}"
step resnet18-full 35 "$PYTHON" part2_resnet18.py --mode full --weights "$R18" "${COMMON[@]}"

# Compiling takes most of this step, so only the issue's aim (ResNet-18 full) and MobileNetV2 fc (feature caching)
# are compiled; the 2-epoch runs above give every variant's uncompiled training speed.
step throughput 110 "$PYTHON" bench/throughput.py --device cuda --compile --data-dir "$DATA_DIR" \
    --output-dir "$WORK/runs" --results-dir "$WORK/throughput" --models resnet18:full,mobilenet_v2:fc

NOTE_ARGS=()
for n in "${NOTES[@]+"${NOTES[@]}"}"; do NOTE_ARGS+=(--note "$n"); done
timeout --kill-after=2 "$REPORT_RESERVE" "$PYTHON" bench/gpu_collect.py --work "$WORK" --gpu-name "$GPU" \
    --results-dir "$RESULTS_DIR" "${NOTE_ARGS[@]+"${NOTE_ARGS[@]}"}" || FAILED=1
[[ ${KEEP_RUNS:-0} == 1 ]] || rm -rf "$WORK/runs"
echo "logs in $LOG_DIR; ${SECONDS}s in all"
exit "$FAILED"
