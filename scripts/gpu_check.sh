#!/usr/bin/env bash
# The GPU benchmark on a CUDA machine (issue 6): benchmarks/gpu.py, about 8 minutes on one H100.
#
# Through the device tool, from the repository root:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl", "build/gpu-bench/wheels"],
#       timeout_s=600)
# The machine has Python 3.12 and torch with CUDA but no PyAV, grpcio-tools,
# grpcio-health-checking, grpcio-reflection or PyNvVideoCodec. Every wheel in .whl/ (PyAV:
# av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl), build/gpu-bench/wheels/ and
# build/gpu-bench/nvdec-wheel/ is installed into /tmp/site first. Fill them here with the
# versions of requirements/gpu.lock (one version of each package across the folders):
#   dl() { python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d "$@"; }
#   dl build/gpu-bench/wheels grpcio==1.85.3 grpcio-tools==1.85.1 \
#     grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2
#   dl build/gpu-bench/nvdec-wheel pynvvideocodec==2.2.4
# The PyNvVideoCodec wheel (27 MB) does not fit into one call's 64 MiB beside the others, so
# bring it with a first call, `run(command="true", carry=["build/gpu-bench/nvdec-wheel"])`, and
# start the one above within the 30 s the machine stays warm: ignored paths already there are
# kept between calls. Without it, nvdec and hybrid are skipped and reported as such.
# One call instead: PyNvVideoCodec slimmed into build/gpu-bench/pynv (scripts/nvdec_profile.sh
# says how), grpcio, grpcio-health-checking and grpcio-reflection alone in
# build/gpu-bench/wheels-min, and the gRPC stubs generated here (the device has protobuf):
#   run(command="bash scripts/gpu_check.sh", carry=[".whl", "build/gpu-bench/pynv",
#       "build/gpu-bench/wheels-min", "src/vidtag/v1/tagger_pb2.py",
#       "src/vidtag/v1/tagger_pb2_grpc.py", "src/vidtag/v1/tagger_pb2.pyi"], timeout_s=600)
#
# Arguments go to benchmarks/gpu.py (e.g. `--only r2plus1d_18 --minutes 4`). The tree plus
# that carry is at the tool's 64 MiB limit: `bash scripts/device_tree.sh hold` first,
# `restore` after. Done on one H200 on 2026-11-28 (README, benchmarks/results/gpu-h200-*):
# concurrency 1 by decode shares 1/4/8, NVDEC scaling with blocking waits, throughput with
# 1/2/4 server processes with and without an outside MPS daemon, hybrid. Next on a lent
# device, two calls on one warm machine (the one-call carry above; start the second within
# the 30 s the machine stays warm):
# 1. (timeout_s 420) the four ways of handing frames to the GPU (benchmarks/upload.py, in
#    nvdec_profile.sh) and the CUDA tests, then concurrency 1 with 2, 3 and 4 shares:
#      CUDA_TESTS=1 bash scripts/nvdec_profile.sh --skip parity,stages,threads \
#        --processes 16 --waits block --seconds 3; \
#      bash scripts/gpu_check.sh --only default,nvdec,latency --nvdec-workers 16 \
#        --decode-shares 2,3,4 --latency-s 5 --minutes 2.5
# 2. (timeout_s 480) throughput with four server processes, the server's own MPS daemon
#    against none (`--cuda-mps`; the connections now spread, see the sprd column), and GPU
#    memory over the mixed clips on the first configuration:
#      bash scripts/gpu_check.sh --only r2plus1d_18,nvdec,throughput,memory \
#        --server-processes 4 --cuda-mps on,off --concurrency 32,48,64 \
#        --throughput-inputs bytes --step-s 4 --memory-s 60 --minutes 7
#    and, if time is left, `--cuda-mps on --nvdec-workers 32 --decode-shares 1,4`.
# What to read: whether `--cuda-mps on` matches the outside daemon (444 clips/s at c=32);
# whether an even spread over the four processes lifts throughput towards NVDEC's own
# ~540 clips/s; whether splitting clips (--decode-shares) costs throughput under load (each
# step's "split N %" says how many clips were split).
# Writes gpu.json,
# gpu.log, env.txt and server-logs.tgz into $OUT when set (the device tool's folder), else
# build/gpu-bench/. Exit status: gpu.py's (0 every bar passed, 1 a bar failed, 2 nothing ran),
# or 2 when the environment is not usable (said why).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-bench}
mkdir -p "$out" build/gpu-bench
# shellcheck source=scripts/device_env.sh
. scripts/device_env.sh || exit 2

# What this machine offers (also kept as env.txt).
{
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
  else
    echo "nvidia-smi: not available"
  fi
  nproc
  $PY - <<'EOF'
import importlib
for name in ("av", "grpc", "grpc_tools", "grpc_health", "grpc_reflection", "google.protobuf",
             "numpy", "onnx", "onnxruntime", "torch", "PyNvVideoCodec", "prometheus_client",
             "tqdm", "PIL"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:18s} {getattr(mod, '__version__', 'yes')}")
    except Exception as exc:  # ImportError, or a driver check failing at import
        print(f"{name:18s} MISSING ({type(exc).__name__}: {exc})")
try:
    import torch
    ok = torch.cuda.is_available()
    print("torch.cuda         ", torch.cuda.get_device_name(0) if ok else "not available")
except Exception as exc:
    print("torch.cuda          not available:", exc)
EOF
} 2>&1 | tee "$out/env.txt"

# gRPC stubs are generated, not committed.
if $PY -c "import grpc_tools" 2>/dev/null; then
  $PY -m grpc_tools.protoc -Iproto --python_out=src --pyi_out=src --grpc_python_out=src \
    proto/vidtag/v1/tagger.proto || { echo "gpu_check: generating the gRPC stubs failed"; exit 2; }
elif [ -f src/vidtag/v1/tagger_pb2.py ] && [ -f src/vidtag/v1/tagger_pb2_grpc.py ]; then
  echo "grpc_tools missing: using the stubs already in src/vidtag/v1"
else
  echo "gpu_check: grpc_tools is not installed and src/vidtag/v1 has no stubs; carry the" \
    "grpcio-tools wheel (see the top of scripts/gpu_check.sh)"
  exit 2
fi
missing=$($PY - <<'EOF'
import importlib
need = ("av", "grpc", "grpc_health.v1.health_pb2", "grpc_reflection.v1alpha.reflection",
        "vidtag.v1.tagger_pb2_grpc", "vidtag.server.app", "torch", "onnxruntime")
for name in need:
    try:
        importlib.import_module(name)
    except Exception as exc:
        print(f"{name} ({type(exc).__name__}: {exc})")
EOF
)
if [ -n "$missing" ]; then
  echo "gpu_check: cannot import:"
  echo "$missing"
  echo "carry the missing packages as wheels (see the top of scripts/gpu_check.sh)"
  exit 2
fi
$PY -m vidtag.cli serve --help | grep -E -- '--(device|runtime|precision|decode-backend|nvdec-workers) '

$PY benchmarks/gpu.py --out "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu.log"
rc=${PIPESTATUS[0]}
tar czf "$out/server-logs.tgz" -C build/gpu-bench logs 2>/dev/null || true
if [ "$out" != build/gpu-bench ]; then
  cp "$out/gpu.json" "$out/gpu.log" build/gpu-bench/ 2>/dev/null || true
fi
echo "gpu_check: exit $rc; outputs in $out"
exit "$rc"
