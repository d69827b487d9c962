#!/usr/bin/env bash
# NVDEC profile on a CUDA machine (issue 6): benchmarks/nvdec_profile.py plus the test suite's
# CUDA-only tests, in one device call of about 3 minutes with no gRPC packages needed:
#   run(command="bash scripts/nvdec_profile.sh", carry=[".whl", "build/gpu-bench/pynv"],
#       timeout_s=300)
# .whl/ holds the PyAV wheel (see scripts/gpu_check.sh); build/gpu-bench/pynv/ holds
# PyNvVideoCodec unpacked and slimmed to its CUDA 13 module (9 MB instead of the 27 MB wheel, so
# both fit one call's 64 MiB):
#   unzip -q pynvvideocodec-2.2.4-*.whl -d /tmp/nvw && cd /tmp/nvw/PyNvVideoCodec &&
#   mkdir -p $P/PyNvVideoCodec && cp -r __init__.py decoders transcoder VersionCheck*.so \
#     PyNvVideoCodec_130*.so libavformat.so.63 libavutil.so.61 $P/PyNvVideoCodec/ &&
#   cp -r ../pynvvideocodec. $P/        # P=build/gpu-bench/pynv
# Arguments go to benchmarks/nvdec_profile.py. Then the suite's CUDA-only tests and
# benchmarks/upload.py (the server's per-request hand-over of frames to the GPU, ~20 s).
# Writes nvdec-profile.json, profile.log, pytest-cuda.log and upload.log into $OUT when set,
# else build/gpu-bench/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-bench}
mkdir -p "$out"
# shellcheck source=scripts/device_env.sh
. scripts/device_env.sh || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader
$PY benchmarks/nvdec_profile.py --out "$out/nvdec-profile.json" "$@" 2>&1 | tee "$out/profile.log"
rc=${PIPESTATUS[0]}
if [ "${CUDA_TESTS:-1}" != 0 ]; then  # CUDA_TESTS=0: the profile alone
  timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_torch_backend.py -k cuda 2>&1 \
    | tail -15 | tee "$out/pytest-cuda.log"
  timeout 60 $PY benchmarks/upload.py 2>&1 | tail -8 | tee "$out/upload.log"
fi
echo "nvdec_profile: exit $rc"
exit "$rc"
