#!/usr/bin/env bash
# Issue 6 in one device call of ~8 minutes: NVDEC decode scaling over worker processes without
# and with CUDA MPS (benchmarks/nvdec_profile.py), then the GPU benchmark (gpu_check.sh) with
# MPS on where it decoded faster and without errors, else off. Through the device tool:
#   run(command="bash scripts/gpu_mps.sh", carry=[".whl", "build/gpu-bench/pynv",
#       "build/gpu-bench/wheels-min", "src/vidtag/v1/tagger_pb2.py",
#       "src/vidtag/v1/tagger_pb2_grpc.py", "src/vidtag/v1/tagger_pb2.pyi"], timeout_s=560)
# (the wheels and stubs as scripts/gpu_check.sh says). PROCS: process counts of the profile
# (8,16); arguments go to benchmarks/gpu.py (default below: NVDEC only, R(2+1)D-18 first, 16
# decoder processes, throughput with uploads and with paths, 5.5 minutes). Writes under $OUT:
# off/ and mps/ (the two profiles; the choice at the end of mps/profile.log), and gpu_check.sh's
# files (8 files, what one call brings back).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-bench}
mkdir -p "$out/off" "$out/mps"
procs=${PROCS:-8,16}
profile=(--skip parity,stages,threads,threads_best --processes "$procs" --seconds 4)
CUDA_TESTS=0 OUT=$out/off bash scripts/nvdec_profile.sh "${profile[@]}"
MPS=1 CUDA_TESTS=0 OUT=$out/mps bash scripts/nvdec_profile.sh "${profile[@]}"
# MPS stays on for the benchmark only if its best row decoded more clips/s, without errors.
use=$(python3 - "$out/off/nvdec-profile.json" "$out/mps/nvdec-profile.json" <<'PY'
import json, sys
best = []
for path in sys.argv[1:]:
    try:
        rows = json.load(open(path)).get("processes") or []
    except (OSError, ValueError):
        rows = []
    ok = [r["clips_per_s"] for r in rows if isinstance(r, dict) and not r.get("errors")]
    best.append(max(ok, default=0.0))
print("mps" if best[1] > best[0] else "off", *best)
PY
)
echo "choice (best clips/s off, mps): $use" | tee -a "$out/mps/profile.log"
if [ "${use%% *}" = off ]; then
  echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/vidtag-mps/pipe nvidia-cuda-mps-control 2>/dev/null
  mps=""
else
  mps=1
fi
if (($#)); then
  args=("$@")
else
  args=(--only r2plus1d_18,default,nvdec --nvdec-workers 16 --throughput-inputs bytes,path
    --latency-s 4 --step-s 4 --memory-s 70 --minutes 5.5)
fi
MPS=$mps bash scripts/gpu_check.sh "${args[@]}"
