#!/usr/bin/env bash
# Train default-model candidates on one GPU machine in a single command:
#   1. synthesise the STB-1 train split on every core,
#   2. decode it once through the serving decoder into a shared frame cache,
#   3. train every architecture in ARCHS concurrently on the GPU under one wall-time budget
#      (the LR schedule follows wall time, so each gets a complete schedule),
#   4. export each best checkpoint as an artifact (ONNX parity checked) and pack the results.
# Knobs (environment): N_TRAIN SEED_TRAIN BUDGET ARCHS BATCH LR DEVICE WORK RESULTS, and END_BY:
# seconds from the start by which everything must be packed (training gets what is left of it
# after synthesis and caching, less RESERVE for export), for a command with a hard time limit.
# The packed results unpack into $WORK/models/<NAME or stb1-<arch>>/<VERSION> plus run histories
# and logs (NAME only with a single architecture).
set -euo pipefail

N_TRAIN=${N_TRAIN:-2400}
SEED_TRAIN=${SEED_TRAIN:-1}
BUDGET=${BUDGET:-240}
END_BY=${END_BY:-0}
RESERVE=${RESERVE:-60}
NAME=${NAME:-}
VERSION=${VERSION:-1}
ARCHS=${ARCHS:-"x2plus1d_s x2plus1d_d x2plus1d_m"}
BATCH=${BATCH:-16}
LR=${LR:-0.002}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-build/gpu}
RESULTS=${RESULTS:-$WORK/results.tar.gz}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}

stamp() { echo "[$(date +%H:%M:%S)] $*"; }
mkdir -p "$WORK"

if [ ! -f "$WORK/train/manifest.jsonl" ]; then
    stamp "synth $N_TRAIN train clips (seed $SEED_TRAIN) on $(nproc) cores"
    $PY -m vidtag.cli synth --split train --count "$N_TRAIN" --seed "$SEED_TRAIN" \
        --out "$WORK/train" --quiet >/dev/null
fi

stamp "frame cache"
$PY -m vidtag.cli cache --manifest "$WORK/train/manifest.jsonl" --out "$WORK/cache-train" --quiet

if [ "$END_BY" -gt 0 ]; then
    BUDGET=$((END_BY - SECONDS - RESERVE))
    [ "$BUDGET" -ge 30 ] || { stamp "only ${BUDGET}s left for training"; exit 1; }
fi
pids=()
for arch in $ARCHS; do
    run="$WORK/run-$arch"
    mkdir -p "$run"
    ln -sfn ../cache-train "$run/cache-train"
    stamp "train $arch for ${BUDGET}s on $DEVICE"
    $PY -m vidtag.cli train --manifest "$WORK/train/manifest.jsonl" --out "$run" \
        --arch "$arch" --device "$DEVICE" --time-budget "$BUDGET" --epochs 100000 \
        --batch-size "$BATCH" --lr "$LR" --threads 4 --quiet >"$run/train.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
stamp "training done (status $status)"

for arch in $ARCHS; do
    run="$WORK/run-$arch"
    tail -n 1 "$run/train.log" || true
    if [ -f "$run/best.pt" ]; then
        $PY -m vidtag.cli export --checkpoint "$run/best.pt" --out "$WORK/models" \
            --name "${NAME:-stb1-$arch}" --version "$VERSION" >>"$run/train.log" 2>&1 || status=1
    fi
done

stamp "pack $RESULTS"
tar -czf "$RESULTS" -C "$WORK" models $(cd "$WORK" && ls -d run-*/history.json run-*/train.log 2>/dev/null)
exit $status
