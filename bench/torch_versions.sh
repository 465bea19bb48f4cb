#!/usr/bin/env bash
# Run the test suite under other torch releases, each in its own virtualenv (.venv-torch-<version>, git-ignored),
# to check the torch range in pyproject.toml. The main .venv (torch 2.13.0, CPU) is left alone.
#
#   bench/torch_versions.sh               # torch 2.14.1
#   bench/torch_versions.sh 2.13.0 2.14.1
#   EXTRAS=dev,onnx JOBS=2 PYTHON=python3.11 bench/torch_versions.sh 2.14.1
#
# torch and the package are installed in one pip call, so a version outside pyproject's range fails at
# install time instead of being silently swapped for another. Only releases pip can take from this machine's
# disk are cheap here (2.13.0 CPU, 2.14.1 CUDA, ~5.5 GB per venv); others download several GB from PyPI.
# Exit status: 0 when every version passed, else 1. Prints one summary line per version at the end.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev}
JOBS=${JOBS:-2}
if [ "$#" -eq 0 ]; then set -- 2.14.1; fi

summary=()
status=0
for version in "$@"; do
    venv=".venv-torch-$version"
    echo "=== torch $version in $venv"
    if ! { test -x "$venv/bin/python" || "$PYTHON" -m venv "$venv"; } ||
       ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$version" -e ".[$EXTRAS]"; then
        summary+=("torch $version: install failed")
        status=1
        continue
    fi
    # The version that actually imports, not the one asked for (a local tag such as +cpu shows here).
    ran=$("$venv/bin/python" -c 'import torch; print(torch.__version__, "CUDA build" if torch.version.cuda else "CPU build")')
    echo "torch that runs the tests: $ran"
    start=$SECONDS
    # -p no:cacheprovider: the main venv's .pytest_cache (last-failed) is not this run's business.
    "$venv/bin/python" -m pytest -q -n "$JOBS" -p no:cacheprovider tests | tee "$venv/pytest.log"
    code=${PIPESTATUS[0]}
    last=$(grep -E '^=* ?[0-9]+ (passed|failed)|^=+ .*(passed|failed|error).* =+$' "$venv/pytest.log" | tail -n 1)
    summary+=("torch $ran: pytest exit $code, ${last:-no summary line} ($((SECONDS - start)) s)")
    [ "$code" -eq 0 ] || status=1
done

echo
printf '%s\n' "${summary[@]}"
exit "$status"
