#!/usr/bin/env bash
# The GPU benchmark, unattended, on one H100 (or H200) with no network and only torch, transformers,
# peft and accelerate installed: LoRA SFT tokens/s + MFU on Llama-3.1-8B's shape, and the Lathe
# server vs the raw continuous batching engine at 64 streams. Prints one JSON summary (stdout);
# progress on stderr. Stops itself before 8 minutes (LATHE_GPU_TIMEOUT, seconds).
#
#   bench/gpu.sh --prepare        # once, on a machine WITH PyPI: the wheels the GPU image lacks -> bench/.wheels
#   bench/gpu.sh                  # on the GPU machine (carry bench/.wheels along): writes bench/results/gpu.json
#   bench/gpu.sh --out DIR/x.json # elsewhere
#   bench/gpu.sh --tiny           # anywhere, CPU: the same code paths with tiny shapes (~20 s; JSON in /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS=${LATHE_GPU_WHEELS:-$REPO/bench/.wheels}

# $PYTHON if set; else the project's venv when there is one (this machine); else python3 (the GPU image's).
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi

if [[ "${1:-}" == "--prepare" ]]; then
  # The GPU image runs CPython 3.12 on x86-64: binary wheels (pydantic-core, regex) for that.
  mkdir -p "$WHEELS"
  PYTHONPATH="$REPO" "$PY" -m bench.gpu_wheels > "$WHEELS/requirements.txt"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${LATHE_GPU_PYTHON_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" -r "$WHEELS/requirements.txt"
  ls -1 "$WHEELS"/*.whl
  du -sh "$WHEELS"
  exit 0
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# Fewer fragmentation failures when the training part falls back to a smaller batch after running out of memory.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE=${LATHE_GPU_SITE:-/tmp/lathe-gpu-site}
  echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE" >&2
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl >&2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheels in $WHEELS: using the installed packages (run 'bench/gpu.sh --prepare' where PyPI is reachable)" >&2
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=TERM --kill-after=20 "${LATHE_GPU_TIMEOUT:-470}" "$PY" -m bench.gpu "$@"
