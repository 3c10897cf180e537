#!/usr/bin/env bash
# The venv with LLaMA-Factory that tests/test_export_dataset.py loads `dfer export --format` datasets with
# (tests/llamafactory_check.py: its own dataset_info parser, loader, converter and Qwen2-VL template).
#   bash .ci/llamafactory-venv.sh [DIR] [DFER_VENV]   DIR: default .ci-cache/llamafactory-venv (ignored by git);
#                                                     DFER_VENV: dfer's venv (default .venv)
# llamafactory 0.9.5 pins torch/transformers/peft older than dfer's, so it is installed without its dependencies,
# beside the few it needs that dfer does not have (datasets <= 4.0.0, trl <= 0.24, omegaconf), and the venv sees
# dfer's venv for the rest (torch, transformers, PIL: a .pth file). About 230 MB, under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-.ci-cache/llamafactory-venv}"
dfer_venv="$(cd "${2:-.venv}" && pwd)"
stamp="$venv/.dfer-llamafactory-complete"
want="llamafactory==0.9.5 datasets==4.0.0 trl==0.24.0 omegaconf"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want $dfer_venv" ]; then
    echo "llamafactory venv: $venv is complete"
    exit 0
fi
rm -rf "$venv"
"$dfer_venv/bin/python" -m venv "$venv"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# after the venv's own packages: dfer's venv, its own .pth files included (site.addsitedir)
"$dfer_venv/bin/python" -c 'import sysconfig; print("import site; site.addsitedir(%r)" % sysconfig.get_paths()["purelib"])' \
    > "$site/zz_dfer_venv.pth"
"$venv/bin/python" -m pip install -q --no-deps llamafactory==0.9.5 trl==0.24.0
"$venv/bin/python" -m pip install -q datasets==4.0.0 omegaconf
DISABLE_VERSION_CHECK=1 "$venv/bin/python" -c 'import datasets, trl, llamafactory; print("llamafactory", llamafactory.__version__)'
echo "$want $dfer_venv" > "$stamp"
