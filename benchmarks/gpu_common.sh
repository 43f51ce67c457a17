# Sourced by the device scripts (benchmarks/gpu_wave*.sh): installs the carried wheels (.whl/,
# built by benchmarks/device_wheels.sh)
# and defines `step NAME TIMEOUT CMD...`, which runs CMD into $OUT/NAME.log and prints its
# exit code and the log's result lines (the logs come back from the device; /tmp/results,
# $R, holds the full JSON that does not).
set -o pipefail
export PYTHONUNBUFFERED=1
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v WARNING
export PYTHONPATH=/tmp/site:$PWD
B="python3 -m cormorant.bench.cli"
TOK="$PWD/.whl/smollm2-tok"
R=/tmp/results
mkdir -p "$R"
step() {  # name timeout command...
  local name=$1 t=$2; shift 2
  echo "== $name $(date -u +%T)"
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$? $(date -u +%T)"
  grep -E "ms/tok|tok/s|of floor|b1s |passed|failed|sweep|^shape|^qkv|^o |^gate|^down|Error\
|^(none|fp8|int4): |pdl_check| top-1 " \
    "$OUT/$name.log" | tail -40
}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
