#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh needs on the lent GPU machine (issue 23):
# bench/gpu_requirements.txt, --no-deps (every dependency is named there), binary wheels
# only, for CPython 3.12 manylinux x86-64 (the machine's python3). Never torch: the
# machine's own is used. The folder is ignored by git and travels as `carry`.
#
#   bash bench/gpu_wheels.sh                                 # -> bench/gpu-wheels (cp312)
#   bash bench/gpu_wheels.sh --python-version 3.11 --dest DIR    # the rehearsal's (cp311)
#
# Fails if a wheel is missing or the folder exceeds the 64 MiB that may travel; prints the
# total. Needs PyPI (this machine reaches it; the GPU machine does not).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=3.12
DEST=
while [ $# -gt 0 ]; do
  case $1 in
    --python-version) PYVER=$2; shift 2 ;;
    --dest) DEST=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu_wheels: unknown argument $1" >&2; exit 2 ;;
  esac
done
ABI=cp${PYVER/./}
DEST=${DEST:-bench/gpu-wheels$([ "$PYVER" = 3.12 ] || echo "-$ABI")}
LIMIT_MIB=64
PIP=(python3 -m pip)
[ -x .venv/bin/python ] && PIP=(.venv/bin/python -m pip)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two would stop the install there
# --platform: pip matches each manylinux tag exactly, so name the ones PyPI's wheels use.
# PIP_CONSTRAINT is cleared: this machine's pip caps torch, which is not downloaded here.
PIP_CONSTRAINT= "${PIP[@]}" download --quiet --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$DEST" -r bench/gpu_requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)

wanted=$(grep -cE '^[A-Za-z0-9]' bench/gpu_requirements.txt)
got=$(find "$DEST" -maxdepth 1 -name '*.whl' | wc -l)
if [ "$got" -ne "$wanted" ]; then
  echo "gpu_wheels: $got wheels in $DEST for $wanted requirements" >&2
  exit 1
fi
ls -l "$DEST"/*.whl | awk '{printf "%9.1f KiB  %s\n", $5 / 1024, $NF}'
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "gpu_wheels: $got wheels for CPython $PYVER in $DEST, $(awk -v t="$total" \
  'BEGIN { printf "%.1f MiB", t / 1048576 }') (limit $LIMIT_MIB MiB)"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_wheels: over the $LIMIT_MIB MiB that may travel" >&2
  exit 1
fi
