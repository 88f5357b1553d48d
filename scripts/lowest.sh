#!/usr/bin/env bash
# Lower bounds that pass: install effattn[cpu] at the lowest version of each direct dependency pyproject.toml
# allows (uv's --resolution lowest-direct) in a fresh venv, print what resolved, run `effattn demo`.
# Minutes, and ~3 GB for torch's lowest wheel, so not in pytest. Results: docs/install.md#lower-bounds.
# usage: scripts/lowest.sh [VENV]   (default .venv-lowest, replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-lowest}
rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
pip install -q uv
uv pip install -q --resolution lowest-direct -e ".[cpu]"
echo "resolved (lowest-direct):"
# the direct dependencies of effattn[cpu], as installed
names=$(python - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in project["dependencies"] + project["optional-dependencies"]["cpu"]:
    print(re.match(r"[A-Za-z0-9._-]+", req).group(0).lower())
PY
)
uv pip freeze | grep -iE "^($(echo $names | tr ' ' '|'))==" | sed 's/^/  /'
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
effattn demo --out "$out/demo" --seconds 0.2 --seed 0
echo "lowest-direct: effattn demo passed"
