#!/usr/bin/env bash
# The GPU checks, as one script for a machine with a CUDA GPU (about 5 minutes on an H100 / H200):
#   1. the tests marked `cuda` (bf16 generate, fp32 against the reference, flash attention 2, CUDA timing);
#   2. `sharp-prune speed` on LLaVA-OneVision-7B's LLM shape (Qwen2-7B, random weights), bf16, 32 frames x 196
#      tokens, K = 2, fastv / sharp / sharp-cached at r = 0.1, 0.2, 0.3, against the unpruned prefill.
# Everything lands in $OUT (or outputs/device_check): device_check.json holds the test counts and every speed
# figure; the speed JSON/PNG and the pytest log sit beside it.
#
# The device machine has no package registry and an older transformers: put the wheel of a tested release in
# .whl/ first (here: `pip download --no-deps transformers==5.24.0 -d .whl`) and carry `.whl`; it is installed
# into /tmp/site. DEVICE=cpu SHAPE=tiny runs the same steps on the CPU, to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/device_check}
device=${DEVICE:-cuda}
shape=${SHAPE:-qwen2-7b}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:src
fi
if [ "$device" = cuda ] && ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "device_check: torch sees no CUDA GPU here; run it on the GPU machine (or DEVICE=cpu SHAPE=tiny to try it)" >&2
    exit 2
fi
start=$(date +%s)
"$python" -m pytest -q -p no:cacheprovider -m cuda tests --junitxml "$out/cuda_tests.xml" 2>&1 | tee "$out/cuda_tests.log"
tests_status=${PIPESTATUS[0]}
"$python" -m sharp_prune speed --device "$device" --shape "$shape" --frames 32 --tokens-per-frame 196 \
    --methods fastv,sharp,sharp-cached --retentions 0.1,0.2,0.3 --layer 2 --dtype bf16 --warmup 2 --repeats 5 \
    --out "$out" 2>&1 | tee "$out/speed.log"
speed_status=${PIPESTATUS[0]}
"$python" - "$out" "$tests_status" "$speed_status" "$(( $(date +%s) - start ))" <<'PY'
import glob, json, sys, xml.etree.ElementTree as ET
out, tests_status, speed_status, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
summary = {"tests_exit": tests_status, "speed_exit": speed_status, "wall_s": seconds}
try:
    suite = ET.parse(f"{out}/cuda_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    summary["cuda_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError, AttributeError) as err:
    summary["cuda_tests"] = f"no junit report ({err})"
speed = sorted(p for p in glob.glob(f"{out}/speed_*.json"))
if speed:
    payload = json.load(open(speed[-1]))
    summary["speed"] = {
        "file": speed[-1].rsplit("/", 1)[-1],
        "command": payload["command"],
        "machine": payload["machine"],
        "results": [
            {k: r.get(k) for k in ("name", "median_s", "min_s", "max_s", "speedup", "speedup_bound", "kept_len",
                                     "peak_delta_bytes", "peak_bytes", "segments")}
            for r in payload["results"]
        ],
    }
json.dump(summary, open(f"{out}/device_check.json", "w"), indent=2)
print(json.dumps(summary, indent=2)[:4000])
PY
exit $(( tests_status != 0 && tests_status != 5 || speed_status != 0 ))
