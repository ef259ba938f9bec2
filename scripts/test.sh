#!/usr/bin/env bash
# Lint, type-check, CRD drift check, then the whole test suite (slow integration tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PROTEGE_VENV:-.venv}
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"
"$venv/bin/protege" crds --check -o crds --reference docs/crd-reference.md
"$venv/bin/pytest" "$@"
