# Sourced by the device-machine scripts (gpu_check.sh, nvdec_profile.sh, gpu_eval.sh), from the
# repository root: installs the carried wheels (.whl/, build/gpu-bench/wheels*/,
# build/gpu-bench/nvdec-wheel/) into $SITE (/tmp/site) and sets PYTHONPATH to them, to
# PyNvVideoCodec unpacked in build/gpu-bench/pynv (see nvdec_profile.sh) and to src. Returns 2
# when the install fails. NO_WHEELS=1 skips the install (a dry run on this machine); MPS=1
# starts CUDA MPS (below).
PY=${PYTHON:-python3}
site=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1
export PYTHONPATH=src
if [ -d build/gpu-bench/pynv/PyNvVideoCodec ]; then
  export PYTHONPATH=build/gpu-bench/pynv:$PYTHONPATH
fi
shopt -s nullglob
wheels=(.whl/*.whl build/gpu-bench/wheels*/*.whl build/gpu-bench/nvdec-wheel/*.whl)
shopt -u nullglob
if [ -z "${NO_WHEELS:-}" ] && ((${#wheels[@]})); then
  # One install per machine: a later script of the same device call finds the same wheels.
  stamp="${wheels[*]##*/}"
  if [ "$(cat "$site/.vidtag-wheels" 2>/dev/null)" != "$stamp" ]; then
    echo "installing ${#wheels[@]} wheel(s) into $site: $stamp"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "${wheels[@]}" || { echo "installing the wheels failed"; return 2; }
    echo "$stamp" > "$site/.vidtag-wheels"
  fi
  export PYTHONPATH=$site:$PYTHONPATH
fi

# MPS=1: CUDA MPS, so that processes using the GPU (NVDEC workers, the server) share one
# context instead of being time-sliced between theirs. The daemon is started once and stays
# for later scripts of the same call; if no client can then use the GPU it is stopped and the
# run goes on without it (said on the first line, like a missing control binary).
if [ -n "${MPS:-}" ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/vidtag-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/vidtag-mps/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  mps=$(command -v nvidia-cuda-mps-control || ls /usr/local/nvidia/bin/nvidia-cuda-mps-control \
    2>/dev/null)
  if [ -z "$mps" ]; then
    echo "MPS: off (no nvidia-cuda-mps-control on this machine)"
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  elif [ -S "$CUDA_MPS_PIPE_DIRECTORY/control" ] || "$mps" -d; then
    if timeout 60 $PY -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
      echo "MPS: on ($mps)"
    else
      echo "MPS: off (a CUDA client failed under it; stopped)"
      echo quit | "$mps"
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    fi
  else
    echo "MPS: off ($mps -d failed)"
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
