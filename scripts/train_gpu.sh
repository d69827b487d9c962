#!/usr/bin/env bash
# Train the default model on one GPU machine in one command with a hard time limit:
#   1. synthesise the STB-1 train split on the CPU cores, time-boxed to SYNTH_S seconds;
#   2. meanwhile (else the GPU would idle while the CPUs encode), at each time in STAGES train on
#      the clips written so far, until the next stage or the end of synthesis, each stage
#      starting from the previous one's weights with a fresh LR schedule;
#   3. train on every clip in the same way until END_BY - RESERVE seconds;
#   4. export the best checkpoint (ONNX parity checked) and pack the results into RESULTS.
# Clips whose index is a multiple of 10 form the validation split in both stages and are never
# trained on, so the per-tag thresholds are calibrated on unseen clips. STAGES="": one stage.
# RENDER > 0 adds that many fresh rendered (never encoded) clips to every epoch, drawn by
# RENDER_WORKERS processes (`vidtag train --render-per-epoch`): the cores not encoding render,
# so the network sees far more distinct clips than the encoder can make (it memorises those).
# AUX > 0 weighs a dense object-mask loss (`--aux-masks`; ARCH=x2plus1d_o serves its maps):
# masks of the encoded STB-1 clips and of the rendered ones.
# Knobs (environment): N_TRAIN (upper bound; SYNTH_S decides) SEED_TRAIN SYNTH_S STAGES END_BY
# RESERVE ARCH NAME VERSION BATCH LR AUGMENT DEVICE WORK RESULTS SYNTH_WORKERS RENDER
# RENDER_SEED RENDER_WORKERS AUX HEIGHT WIDTH FILL PY.
# The packed results unpack into $WORK/models/$NAME/$VERSION plus the runs' histories and logs.
set -euo pipefail

N_TRAIN=${N_TRAIN:-6000}
SEED_TRAIN=${SEED_TRAIN:-1}
SYNTH_S=${SYNTH_S:-300}
STAGES=${STAGES-"90 200"} # set but empty: one stage
END_BY=${END_BY:-540}
RESERVE=${RESERVE:-45}
ARCH=${ARCH:-x2plus1d_m}
NAME=${NAME:-stb1}
VERSION=${VERSION:-1}
BATCH=${BATCH:-32}
LR=${LR:-0.003}
AUGMENT=${AUGMENT:-full}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-build/gpu}
RESULTS=${RESULTS:-$WORK/results.tar.gz}
PY=${PY:-python3}
CORES=$(nproc)
RENDER=${RENDER:-0}
RENDER_SEED=${RENDER_SEED:-1000}
AUX=${AUX:-0}
HEIGHT=${HEIGHT:-160} # network input (frames are cached at this size)
WIDTH=${WIDTH:-96}
FILL=${FILL:-1} # SamplingSpec.fill of the frames trained on (the artifact serves with it)
# leave two cores to the trainer, whose Python loop launches the GPU kernels; with RENDER, half
# of the others encode while synthesis runs, and all of them render after it
FREE=$((CORES > 3 ? CORES - 2 : 1))
SYNTH_WORKERS=${SYNTH_WORKERS:-$((RENDER > 0 && FREE > 1 ? FREE / 2 : FREE))}
RENDER_WORKERS=${RENDER_WORKERS:-$FREE}
render_workers() { # while synthesis runs, the cores it leaves
    if kill -0 "${synth_pid:-0}" 2>/dev/null; then
        echo $((RENDER_WORKERS > SYNTH_WORKERS ? RENDER_WORKERS - SYNTH_WORKERS : 1))
    else echo "$RENDER_WORKERS"; fi
}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

runs=0
stamp() { echo "[$(date +%H:%M:%S) +${SECONDS}s] $*"; }
mkdir -p "$WORK"
TRAIN="$WORK/train"

# split MANIFEST STEM: STEM.train.jsonl and STEM.val.jsonl next to the clips (index % 10 == 0: val)
split() {
    $PY - "$1" "$TRAIN/$2" <<'EOF'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]
for part, keep in (("train", lambda r: r["index"] % 10), ("val", lambda r: r["index"] % 10 == 0)):
    with open(f"{sys.argv[2]}.{part}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if keep(r))
print(f"{len(rows)} clips")
EOF
}

# train RUN STEM BUDGET [INIT]
train() {
    mkdir -p "$1"
    local rw
    rw=$(render_workers)
    runs=$((runs + 1)) # each run renders clips of its own seed: no stage repeats another's
    stamp "train $ARCH on $2 for ${3}s on $DEVICE${4:+ from $4}, $RENDER rendered clips an epoch ($rw processes)"
    $PY -m vidtag.cli train --manifest "$TRAIN/$2.train.jsonl" --val-manifest "$TRAIN/$2.val.jsonl" \
        --out "$1" --arch "$ARCH" --device "$DEVICE" --time-budget "$3" --epochs 100000 \
        --batch-size "$BATCH" --lr "$LR" --augment "$AUGMENT" --threads 2 --no-keep-epochs \
        --render-per-epoch "$RENDER" --render-seed $((RENDER_SEED + runs)) --render-workers "$rw" \
        --aux-masks "$AUX" --height "$HEIGHT" --width "$WIDTH" --fill "$FILL" \
        ${4:+--init "$4"} --quiet >"$1/train.log" 2>&1
    tail -n 2 "$1/train.log" | head -n 1 | cut -c 1-400
}

stamp "synth up to $N_TRAIN train clips (seed $SEED_TRAIN) for ${SYNTH_S}s on $SYNTH_WORKERS of $CORES cores"
$PY -m vidtag.cli synth --split train --count "$N_TRAIN" --seed "$SEED_TRAIN" --out "$TRAIN" \
    --workers "$SYNTH_WORKERS" --time-limit "$SYNTH_S" --quiet >"$WORK/synth.log" 2>&1 &
synth_pid=$!

init=""
stages=($STAGES)
for i in "${!stages[@]}"; do
    at=${stages[$i]}
    until_s=${stages[$((i + 1))]:-$SYNTH_S}
    sleep $((at > SECONDS ? at - SECONDS : 0))
    stem="stage$((i + 1))"
    cp "$TRAIN/manifest.partial.jsonl" "$WORK/$stem.jsonl"
    stamp "$stem: $(split "$WORK/$stem.jsonl" "$stem") written so far"
    # 10 s: start-up and decoding the new clips into the frame cache
    train "$WORK/run-$stem" "$stem" $((until_s > SECONDS + 40 ? until_s - SECONDS - 10 : 30)) "$init" ||
        stamp "$stem failed: $(tail -n 3 "$WORK/run-$stem/train.log")"
    [ -f "$WORK/run-$stem/best.pt" ] && init="$WORK/run-$stem/best.pt"
done
manifest="$TRAIN/manifest.jsonl"
wait "$synth_pid" || { manifest="$TRAIN/manifest.partial.jsonl"; stamp "synth failed: $(tail -n 3 "$WORK/synth.log")"; }
stamp "synth done: $(split "$manifest" all)"

budget=$((END_BY - RESERVE - SECONDS - 15)) # 15 s: decoding the new clips into the frame cache
status=0
if [ "$budget" -ge 30 ]; then
    train "$WORK/run-all" all "$budget" "$init" || status=1
    best="$WORK/run-all/best.pt"
else
    stamp "only ${budget}s left: exporting the last stage"
    best="$init"
fi
stamp "export $best"
$PY -m vidtag.cli export --checkpoint "$best" --out "$WORK/models" --name "$NAME" \
    --version "$VERSION" >"$WORK/export.log" 2>&1 || { status=1; cat "$WORK/export.log"; }

stamp "pack $RESULTS"
tar -czf "$RESULTS" -C "$WORK" models synth.log export.log \
    $(cd "$WORK" && ls -d run-*/history.json run-*/train.log run-*/curves.png 2>/dev/null)
stamp "done (status $status)"
exit $status
