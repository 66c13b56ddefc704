#!/usr/bin/env bash
# The GPU check, one command on the GPU machine (at most 8 minutes on one H200):
#   bash bench/gpu_check.sh            → bench/results/gpu_check.json
# The machine has torch, transformers, accelerate and peft; what else rankloop and TRL need travels as
# wheels in bench/gpu_wheels/ (git-ignored; build them beforehand with `make gpu-wheels`). pip installs
# only from there (--no-index) and only what is not importable already.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WHEELS=bench/gpu_wheels
missing=$($PY - <<'PY'
import importlib.util
mods = {"pydantic": "pydantic", "pydantic_settings": "pydantic-settings", "rich": "rich", "typer": "typer",
        "yaml": "pyyaml", "trl": "trl", "datasets": "datasets"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
  if [ ! -d "$WHEELS" ]; then echo "missing: $missing, and no $WHEELS (run 'make gpu-wheels' where there is network)" >&2; exit 2; fi
  echo "installing from $WHEELS: $missing"
  # trl/datasets may fail to resolve (pyarrow/pandas are not carried): the check then reports TRL as skipped.
  for pkg in $missing; do
    $PY -m pip install -q --no-index --find-links "$WHEELS" "$pkg" || echo "could not install $pkg from $WHEELS" >&2
  done
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_CHECK_TIMEOUT:-480}" $PY bench/gpu_check.py "$@"
