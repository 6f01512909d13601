#!/usr/bin/env bash
# Runs benchmarks/gpu_suite.py on the device machine, from the repository root, in one call:
#   bash benchmarks/gpu_run.sh [extra gpu_suite.py arguments]
# Installs the carried wheels (.whl/*.whl: transformers, trl, datasets, ... that the device's Python lacks or has
# too old) into $SITE (default /tmp/site) without touching the machine's environment, puts them and this repository first on
# PYTHONPATH (trl_omni is not installed there), prints the GPU and the versions, checks the imports, then runs the
# suite with its JSON, table and log written under $OUT (default: ./gpu_suite_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_suite_out}"
SITE="${SITE:-/tmp/site}"  # where the carried wheels are installed
mkdir -p "$OUT"
# The device's Python with CUDA torch; override with PYTHON=...
if [ -z "${PYTHON:-}" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then PYTHON=/opt/torch/.venv/bin/python3; else PYTHON=python3; fi
fi

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    2>&1 | grep -v "^WARNING: Target directory" | tail -20
else
  echo "no .whl/*.whl carried: using the installed packages"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

{
  nvidia-smi || echo "nvidia-smi failed"
  "$PYTHON" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
missing = []
for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "tokenizers",
             "safetensors", "huggingface_hub", "numpy", "pandas", "pyarrow", "PIL", "xxhash", "dill", "multiprocess",
             "math_verify", "latex2sympy2_extended", "regex", "psutil", "yaml", "jinja2", "trl_omni"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:24s} {getattr(module, '__version__', '?'):16s} {getattr(module, '__file__', '')}")
    except Exception as error:
        missing.append(name)
        print(f"  {name:24s} IMPORT FAILED: {type(error).__name__}: {error}")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("missing:", missing or "none")
EOF
} 2>&1 | tee "$OUT/env.txt"

"$PYTHON" benchmarks/gpu_suite.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
