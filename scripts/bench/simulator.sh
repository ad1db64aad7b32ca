#!/usr/bin/env bash
# Simulator benchmark: connscale's default policy vs the baselines on the shared traces (peak
# scaled to 10 nodes at the 28,000 cap): first the summary of the three targets against classic
# with its warm pool (`connscale simulate --summary`), then each trace's table, plus a 100k-point
# trace for speed. Writes plots to docs/bench/ (linked from BENCHMARKS.md) and prints markdown
# tables.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
traces=${CONNSCALE_TRACES:-$root/../shared/traces}
cargo build --release --quiet --bins  # the same feature set as all.sh: no rebuild
bin=target/release/connscale
mkdir -p target/bench docs/bench
# The summary first: one row per trace, the three targets against classic with its warm pool.
echo '### Summary: the targets on every shared trace'
echo
args=()
for t in "$traces"/*.csv; do args+=(--trace "$t"); done
"$bin" simulate --summary "${args[@]}" 2>/dev/null
echo
for t in "$traces"/*.csv; do
  name=$(basename "$t" .csv)
  echo "### $name"
  echo
  echo '| policy | rejected conn·min | minutes at cap | instance-h | warm-pool h | actions | forced reconnects | peak nodes |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|'
  "$bin" simulate --trace "$t" --plot "docs/bench/sim-$name.svg" --json |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
for name, o in r["policies"].items():
    print("| %s | %.0f | %.1f | %.1f | %.1f | %d | %.0f | %d |" % (name, o["rejected_connection_minutes"], o["minutes_at_cap"], o["instance_hours"], o["warm_pool_hours"], o["scaling_actions"], o["forced_reconnects"], o["peak_nodes"]))'
  echo
done
# Speed: a 100,000-point trace (5-minute steps, ~347 days) through all five policies.
python3 - > target/bench/trace-100k.csv <<'PY'
import math, random
random.seed(1)
print("timestamp,value")
for i in range(100_000):
    t = 1_600_000_000 + i * 300
    day = i / 288 * 2 * math.pi
    print(f"{t},{max(0.0, 1.2 + math.sin(day - 1.9) + 0.2 * random.random()):.4f}")
PY
start=$(date +%s.%N)
"$bin" simulate --trace target/bench/trace-100k.csv --json > /dev/null
end=$(date +%s.%N)
printf '100,000-point trace, 5 policies: %.1f s wall\n' "$(echo "$end - $start" | bc)"
