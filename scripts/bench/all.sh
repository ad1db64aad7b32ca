#!/usr/bin/env bash
# Every benchmark in BENCHMARKS.md, on this machine, in one go: the simulator against the
# baselines, the agent against ss / /proc / netstat, chat-node against the reference Node.js
# Socket.IO server (and against a handshake-only floor), loadtest's own limits, and the live
# demo. Prints each table (markdown) with its command.
# Takes about 20 minutes on 2 cores. Run it on an otherwise idle machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build --release --quiet --bins
section() { printf '\n## %s\n\nCommand: `%s`\n\n' "$1" "$2"; }
section "Simulator" "scripts/bench/simulator.sh"
scripts/bench/simulator.sh
section "Agent" "python3 scripts/bench/agent_bench.py 10000 50000 100000"
python3 scripts/bench/agent_bench.py 10000 50000 100000
section "chat-node vs Node.js Socket.IO" "python3 scripts/bench/chat_vs_node.py 10000"
python3 scripts/bench/chat_vs_node.py 10000
section "chat-node's accept rate against the handshake floor" "python3 scripts/bench/accept_floor.py 5"
python3 scripts/bench/accept_floor.py 5
section "Fan-out: one Redis vs a 3-master Redis Cluster" "python3 scripts/bench/cluster_fanout.py 8000 16000 24000 32000"
python3 scripts/bench/cluster_fanout.py 8000 16000 24000 32000
section "loadtest: held connections, connect rate, CPU per message" "python3 scripts/bench/loadtest.py 60000 20000"
python3 scripts/bench/loadtest.py 60000 20000
section "Demo" "target/release/connscale demo --duration 120s --json --plot docs/bench/demo.svg"
target/release/connscale demo --duration 120s --json --plot docs/bench/demo.svg 2>/dev/null |
  python3 -c '
import json, sys
r = json.load(sys.stdin)
m = r["messages"]
print("| peak instances | final | scale-outs | scale-ins | rejected | sent | delivered | lost | duplicated | reconnects | counts match | processes left |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
print("| %s | %s | %s | %s | %s | %s | %s/%s | %s | %s | %s | %s | %s |" % (r["peak_instances"], r["final_instances"], r["scale_outs"], r["scale_ins"], r["rejected_connections"], m["sent"], m["delivered"], m["expected_deliveries"], m["lost"], m["duplicated"], m["reconnects"], r["counts_match"], r["processes_left"]))'
