#!/usr/bin/env bash
# DDP against one process (issue 5): the same small run trained by 1 process x batch B and by
# 2 gloo processes x batch B/2 (the same global batch, steps and schedule), for each seed;
# every run is exported and evaluated on the test manifest; prints each run's mean Jaccard and
# mAP, then mean +- sd per side. CPU only (gloo); ~2 minutes a run on 2 cores with the defaults.
#
#   TRAIN=build/stb1/train/manifest.jsonl TEST=build/stb1/test/manifest.jsonl N=480 \
#     SEEDS="0 1 2 3 4" bash scripts/ddp_check.sh
#
# Knobs (environment): TRAIN, TEST (manifests), N (first N train clips; 0 = all), SEEDS, ARCH,
# EPOCHS, BATCH (the 1-process batch; even), LR, OUT (work folder), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${TRAIN:-build/stb1/train/manifest.jsonl}
TEST=${TEST:-build/stb1/test/manifest.jsonl}
N=${N:-480}
SEEDS=${SEEDS:-0 1 2 3 4}
ARCH=${ARCH:-x2plus1d_s}
EPOCHS=${EPOCHS:-6}
BATCH=${BATCH:-16}
LR=${LR:-2e-3}
OUT=${OUT:-build/ddp-check}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"

# The first N clips, their paths made absolute (a manifest's relative paths resolve against
# its own folder).
manifest=$OUT/train.jsonl
$PY - "$TRAIN" "$N" "$manifest" <<'EOF'
import json, sys
from pathlib import Path
src, n, dst = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rows = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
with dst.open("w") as f:
    for r in rows[:n] if n else rows:
        r["path"] = str((src.parent / r["path"]).resolve())
        f.write(json.dumps(r) + "\n")
EOF

common=(--manifest "$manifest" --arch "$ARCH" --epochs "$EPOCHS" --lr "$LR" --device cpu
        --quiet --workers 1 --no-keep-epochs)
results=$OUT/results.txt
: > "$results"
run() {  # name, then the command that trains into $OUT/<name>
  local name=$1; shift
  rm -rf "${OUT:?}/$name" "$OUT/models/$name"
  "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1
  $PY -m vidtag.cli export --checkpoint "$OUT/$name/best.pt" --out "$OUT/models" --name "$name" \
    --version 1 > /dev/null
  $PY -m vidtag.cli eval --model "$OUT/models/$name/1" --manifest "$TEST" --json --quiet \
    | $PY -c "import json, sys; m = json.load(sys.stdin); print('$name', m['mean_jaccard'], m['mAP'])" \
    | tee -a "$results"
}
for seed in $SEEDS; do
  run "one-s$seed" $PY -m vidtag.cli train "${common[@]}" --batch-size "$BATCH" --threads 2 \
    --seed "$seed"
  run "two-s$seed" env OMP_NUM_THREADS=1 $PY -m torch.distributed.run --nproc_per_node=2 \
    --standalone -m vidtag.cli train "${common[@]}" --batch-size $((BATCH / 2)) --threads 1 \
    --seed "$seed"
done
$PY - "$results" <<'EOF'
import sys
import numpy as np
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
for side, label in (("one", "1 process"), ("two", "2 processes")):
    j = np.array([float(r[1]) for r in rows if r[0].startswith(side)])
    m = np.array([float(r[2]) for r in rows if r[0].startswith(side)])
    sd = (lambda a: a.std(ddof=1) if a.size > 1 else float("nan"))
    print(f"{label:12s} runs {j.size}  mean Jaccard {j.mean():.4f} +- {sd(j):.4f}  "
          f"mAP {m.mean():.4f} +- {sd(m):.4f}")
EOF
