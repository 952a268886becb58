#!/usr/bin/env bash
# The GPU check: one prepared script for a machine with an NVIDIA GPU, under 8 minutes.
#
#   bench/gpu_check.sh [--ort-wheel PATH/onnxruntime_gpu-1.31.1-*.whl] [--quick] [-- gpu_check.py options]
#
# It checks CUDA and NCCL with a 1-GPU TorchTrainer, trains ADGM, LVAE and RNN-SPN for a fixed number
# of steps (eager and torch.compile with CUDA graphs), and runs ONNX parity and latency with the CUDA
# provider, reporting any node that fell back to the CPU (bench/gpu_check.py says what each part does).
# onnxruntime-gpu comes from a local wheel when the machine has no package index: it is installed into
# its own directory placed first on PYTHONPATH, so the environment's CPU onnxruntime is shadowed, not
# overwritten (the two packages share the `onnxruntime` module). The log goes to stdout and to
# ${GPU_CHECK_LOG:-gpu_check.log}.
#
# Without a GPU it stops with a message, except with --quick, which runs the same code on the CPU
# (gloo, the CPU provider) as a smoke test; CI runs it that way.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in "$here/../.venv/bin/python" "$(command -v python3 || true)"; do
    if [ -x "$candidate" ]; then python="$candidate"; break; fi
  done
fi
wheel="" quick="" rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ort-wheel) wheel="${2:?--ort-wheel needs the path of an onnxruntime_gpu wheel}"; shift 2 ;;
    --quick) quick="--quick"; shift ;;
    --) shift; rest=("$@"); break ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

"$python" -c "import dgm_dist" 2>/dev/null || export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
# torch, onnx(script) and onnxruntime are needed; Ray (section 2) and MLflow are not needed by the
# other sections, so a bare GPU image still gives the throughput and ONNX figures
"$python" -c "import dgm_dist, torch, onnx, onnxscript, onnxruntime, yaml" || {
  echo "gpu_check.sh: $python lacks dgm-dist or its dependencies; install the project (pip install -e '.[gpu]') or set PYTHON" >&2
  exit 2; }

device=cpu
if command -v nvidia-smi >/dev/null && "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=cuda
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
elif [ -z "$quick" ]; then
  echo "gpu_check.sh: no usable NVIDIA GPU here (nvidia-smi or torch.cuda); run it on a GPU node, or with --quick for a CPU smoke test" >&2
  exit 2
fi

if [ -n "$wheel" ]; then
  [ -f "$wheel" ] || { echo "gpu_check.sh: no wheel at $wheel" >&2; exit 2; }
  target="${TMPDIR:-/tmp}/dgm-ort-gpu"
  "$python" -m pip install -q --no-index --no-deps --upgrade --target "$target" "$wheel"
  export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
fi
"$python" -c "import onnxruntime as o; print('onnxruntime', o.__version__, 'from', o.__file__)"

export PYTHONUNBUFFERED=1
set -o pipefail
timeout 470 "$python" "$here/gpu_check.py" --device "$device" $quick "${rest[@]}" 2>&1 | tee "${GPU_CHECK_LOG:-gpu_check.log}"
