#!/usr/bin/env bash
# Issue 5's model-zoo table on STB-1 at one training budget per row (BUDGET seconds, default
# 1800), run in parts: every invocation resumes the committed reports
# benchmarks/results/zoo-$BUDGET.json (networks, bce) and zoo-$BUDGET-heads.json (every head
# on the x2plus1d_s row's network) and trains at most MAX_PAIRS new rows (0: all that are
# left). The splits are rendered when missing (byte-identical for the same seeds: zoo.py
# refuses a report of other clips). The large networks train at inputs that give them several
# epochs of the budget on a 2-core CPU; every row's latency is also measured at the serving
# size. The heads start from the trained x2plus1d_s row's checkpoint, which is kept next to
# the reports (zoo-$BUDGET-trunk.pt) so that a later part can go on without it.
#
#   BUDGET=1800 MAX_PAIRS=2 bash benchmarks/zoo_table.sh
# (NETS / HEADS replace the lists, e.g. for a smoke run on a small DATA directory.)
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-1800}
MAX_PAIRS=${MAX_PAIRS:-0}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-build/stb1}
WORK=${WORK:-build/zoo-$BUDGET}
OUT=benchmarks/results/zoo-$BUDGET
BIG=eco_lite:bce@8x112x64,eco_full:bce@8x112x64,r2plus1d_18:bce@4x112x64,r2plus1d_34:bce@4x80x48
NETS=${NETS:-$BIG,mfnet3d:bce,x2plus1d_m:bce,x2plus1d_s:bce}  # x2plus1d_s last: the trunk
HEADS=${HEADS:-bce,warp,lsep,c2ae,cnn_rnn,scnn_rnn,ria}

for split in "train 2400 1" "test 200 2"; do
  set -- $split
  [ -f "$DATA/$1/manifest.jsonl" ] ||
    PYTHONPATH=src "$PY" -m vidtag.cli synth --split "$1" --count "$2" --seed "$3" --out "$DATA/$1"
done
zoo() {
  PYTHONPATH=src "$PY" benchmarks/zoo.py --train "$DATA/train/manifest.jsonl" \
    --test "$DATA/test/manifest.jsonl" --cache "$DATA/run/cache-train" --budget "$BUDGET" \
    --latency-reps 5 --resume "$@"
}
rows() { if [ -f "$1" ]; then grep -c '"arch"' "$1"; else echo 0; fi; }

before=$(rows "$OUT.json")
zoo --work "$WORK" --json "$OUT.json" --pairs "$NETS" --max-pairs "$MAX_PAIRS"
# keep the trunk as soon as its row is in the report, also when this part trains no head
if [ ! -f "$OUT-trunk.pt" ] && grep -q '"arch": "x2plus1d_s"' "$OUT.json"; then
  cp "$WORK/x2plus1d_s-bce/best.pt" "$OUT-trunk.pt"
fi
left=0  # new rows the heads may still train (0: no limit)
if [ "$MAX_PAIRS" != 0 ]; then
  left=$((MAX_PAIRS - $(rows "$OUT.json") + before))
  [ "$left" -gt 0 ] || exit 0
fi
[ -f "$OUT-trunk.pt" ] || { echo "no x2plus1d_s:bce row for the heads" >&2; exit 1; }
zoo --work "$WORK-heads" --json "$OUT-heads.json" --init "$OUT-trunk.pt" --max-pairs "$left" \
  --pairs "$(echo "$HEADS" | sed 's/[a-z_0-9]*/x2plus1d_s:&/g')"
