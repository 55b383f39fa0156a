#!/usr/bin/env bash
# Build a virtual environment with the locked dependencies and one transformers release, then run tests in it.
#
#   scripts/tf_env.sh ENV_DIR TRANSFORMERS_SPEC [pytest args...]
#
# ENV_DIR is created when missing (torch 2.13.0 first, then requirements.lock without resolving, then the
# package itself), and transformers is then installed as TRANSFORMERS_SPEC says (e.g. "transformers==5.20.0",
# "transformers>=5.20.0,<5.25" for the newest release in range, or "transformers" for the newest of all).
# Prints one line: `<ENV_DIR>: transformers <version>: PASS|FAIL (<first failing test>) in <s> s` and exits
# non-zero on failure (SHOW_LOG=1 also prints the end of the pytest log).
set -uo pipefail
cd "$(dirname "$0")/.."
env_dir=$1
spec=$2
shift 2
python=${PYTHON:-python3}
quiet=(-q --disable-pip-version-check)
# SKIP_LOCKED=1: when the spec's newest release is the one requirements.lock pins, `make test` has just run the
# suite on exactly that environment; say so and stop, rather than build it again and run the suite twice.
if [ "${SKIP_LOCKED:-0}" = 1 ]; then
    newest=$("$python" -m pip install "${quiet[@]}" --dry-run --no-deps --ignore-installed --report - "$spec" 2>/dev/null |
        "$python" -c "import json, sys; print(json.load(sys.stdin)['install'][0]['metadata']['version'])")
    locked=$(sed -n 's/^transformers==//p' requirements.lock)
    if [ -n "$newest" ] && [ "$newest" = "$locked" ]; then
        echo "$env_dir: transformers $newest: the release requirements.lock pins, which \`make test\` runs: not run twice"
        exit 0
    fi
fi
if [ ! -x "$env_dir/bin/python" ]; then
    "$python" -m venv "$env_dir" || exit 1
    # torch first, the local CPU wheel: a resolver left to choose torch pulls gigabytes of CUDA packages.
    "$env_dir/bin/pip" install "${quiet[@]}" torch==2.13.0 || exit 1
    "$env_dir/bin/pip" install "${quiet[@]}" --no-deps -r requirements.lock || exit 1
    "$env_dir/bin/pip" install "${quiet[@]}" --no-deps -e . || exit 1
fi
# --upgrade: the newest release the spec allows; the constraint keeps torch where it is.
"$env_dir/bin/pip" install "${quiet[@]}" --upgrade -c constraints.txt "$spec" || exit 1
version=$("$env_dir/bin/python" -c "import transformers; print(transformers.__version__)")
log="$env_dir/pytest.log"
start=$(date +%s)
"$env_dir/bin/python" -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1
status=$?
elapsed=$(( $(date +%s) - start ))
summary=$(tail -n 1 "$log")
if [ $status -eq 0 ]; then
    echo "$env_dir: transformers $version: PASS ($summary) in ${elapsed} s"
else
    first=$(grep -m 1 -E "^(FAILED|ERROR) " "$log" | cut -c 1-200)
    echo "$env_dir: transformers $version: FAIL (first failing: ${first:-see $log}; $summary) in ${elapsed} s"
    if [ "${SHOW_LOG:-0}" = 1 ]; then tail -n 40 "$log" >&2; fi
fi
exit $status
