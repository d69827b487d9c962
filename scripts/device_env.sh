# Sourced by the device-machine scripts (gpu_check.sh, nvdec_profile.sh, gpu_eval.sh), from the
# repository root: installs the carried wheels (.whl/, build/gpu-bench/wheels*/,
# build/gpu-bench/nvdec-wheel/) into $SITE (/tmp/site) and sets PYTHONPATH to them, to
# PyNvVideoCodec unpacked in build/gpu-bench/pynv (see nvdec_profile.sh) and to src. Returns 2
# when the install fails. NO_WHEELS=1 skips the install (a dry run on this machine).
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
  echo "installing ${#wheels[@]} wheel(s) into $site: ${wheels[*]##*/}"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}" || { echo "installing the wheels failed"; return 2; }
  export PYTHONPATH=$site:$PYTHONPATH
fi
