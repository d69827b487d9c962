#!/usr/bin/env bash
# The default model's STB-1 test accuracy through NVDEC against PyAV, on a CUDA machine (issue
# 6): synthesises the test split (200 clips, seed 2: the split every README figure uses; ~2
# minutes on 16 cores), then `vidtag eval` with each decode backend. Through the device tool:
#   run(command="bash scripts/gpu_eval.sh", carry=[".whl", "build/gpu-bench/pynv"],
#       timeout_s=480)
# (.whl: the PyAV wheel; build/gpu-bench/pynv: PyNvVideoCodec unpacked, see nvdec_profile.sh.)
# Writes eval-nvdec.json, eval-pyav.json and eval.log into $OUT when set, else build/gpu-bench/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-bench}
work=${WORK:-build/stb1/test}
mkdir -p "$out"
# shellcheck source=scripts/device_env.sh
. scripts/device_env.sh || exit 2
{
  [ -f "$work/manifest.jsonl" ] || $PY -m vidtag.cli synth --split test --count "${N_TEST:-200}" \
    --seed "${SEED_TEST:-2}" --out "$work" --workers 0 --quiet
  rc=0
  for backend in nvdec pyav; do
    if $PY -m vidtag.cli eval --manifest "$work/manifest.jsonl" --decode-backend "$backend" \
      --json --quiet > "$out/eval-$backend.json"; then
      $PY -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], \
        {k: round(m[k], 4) for k in ('mean_jaccard', 'mAP', 'micro_f1', 'decode_ms_median')}, \
        'failed', len(m['failed']))" "$out/eval-$backend.json" "$backend"
    else
      rc=1
    fi
  done
  echo "gpu_eval: exit $rc"
  exit "$rc"
} 2>&1 | tee "$out/eval.log"
exit "${PIPESTATUS[0]}"
