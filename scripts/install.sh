#!/bin/sh
# The one way covserve is installed, shared by the Makefile (and so CI) and every Docker image:
#   sh scripts/install.sh PYTHON EXTRAS [editable]
# PYTHON is the interpreter of the target environment, EXTRAS a comma-separated list of extras
# (e.g. "cpu" or "train,dev,cpu,bench"); "editable" installs the checkout in development mode.
# Every package is pinned by constraints.txt, pip included.
set -eu
if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    echo "usage: sh scripts/install.sh PYTHON EXTRAS [editable]" >&2
    exit 2
fi
python="$1"
extras="$2"
root="$(cd "$(dirname "$0")/.." && pwd)"
constraints="$root/constraints.txt"
"$python" -m pip install --quiet --upgrade -c "$constraints" pip
if [ "${3:-}" = editable ]; then
    "$python" -m pip install --quiet -c "$constraints" -e "$root[$extras]"
else
    "$python" -m pip install --quiet -c "$constraints" "$root[$extras]"
fi
