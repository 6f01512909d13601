#!/usr/bin/env bash
# Runs benchmarks/gpu_suite.py on the device machine, from the repository root, in one call:
#   OUT=/some/dir bash benchmarks/gpu_run.sh [extra gpu_suite.py arguments]
# Installs the carried wheels (.whl/*.whl: the packages the device's Python lacks or has too old) into $SITE
# (default /tmp/site) without touching the machine's environment, puts them and this repository first on PYTHONPATH
# (trl_omni is not installed there), prints the GPU, then runs the suite, which prints the versions, names any
# missing module first, and writes results.json, table.md and log.txt under $OUT (default ./gpu_suite_out).
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
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false

{
  nvidia-smi || echo "nvidia-smi failed"
  "$PYTHON" -c "import sys; print('python', sys.version.split()[0], sys.executable)"
  echo "PYTHONPATH=$PYTHONPATH"
} 2>&1 | tee "$OUT/env.txt"

"$PYTHON" benchmarks/gpu_suite.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
