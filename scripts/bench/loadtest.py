"""loadtest's own limits on this machine (release build).

1. Held connections and connect rate: N chat-nodes (no Redis, each under the 20,000 open-file
   limit) take `loadtest ramp --connections C --workers W` from W worker processes over 8 loopback
   source addresses; reports connected, held at the end, connects/s and the per-node split.
2. Client cost per received message: one `loadtest chat` process against one chat-node; CPU
   seconds of each process (from /proc) per delivered message. The loadtest process must cost
   less per message than the node, so one loadtest process saturates a chat-node first.
Prints markdown tables. Usage: python3 scripts/bench/loadtest.py [CONNECTIONS] [RATE]
"""
import json, os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chat_vs_node import REL, cpu_s, die_with_parent, free_port, wait_port  # noqa: E402

def node(port):
    return subprocess.Popen([os.path.join(REL, "chat-node"), "--port", str(port)],
                            env={**os.environ, "CHAT_MAX_CONNECTIONS": "19000", "CHAT_RATE_PER_SEC": "100000",
                                 "CHAT_RATE_BURST": "100000", "RUST_LOG": "warn"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)

def held(connections, rate):
    n_nodes = -(-connections // 17000)
    ports = [free_port() for _ in range(n_nodes)]
    nodes = [node(p) for p in ports]
    try:
        for p in ports:
            wait_port(p)
        workers = -(-connections // 15000)
        args = [os.path.join(REL, "loadtest"), "ramp", "--connections", str(connections), "--rate", str(rate),
                "--hold", "5s", "--workers", str(workers), "--source-ips", "127.0.3.1-127.0.3.8", "--json"]
        for p in ports:
            args += ["--target", f"http://127.0.0.1:{p}"]
        out = subprocess.run(args, capture_output=True, text=True, preexec_fn=die_with_parent)
        r = json.loads(out.stdout or "{}")
        split = " / ".join(str(v) for v in r.get("per_target", {}).values())
        fails = ", ".join(f"{k} {v}" for k, v in r.get("failures", {}).items()) or "none"
        print("| connections | workers | nodes | connected | held at end | connects/s | ramp s | failures | per node |")
        print("|---:|---:|---:|---:|---:|---:|---:|---|---|")
        print(f"| {connections} | {workers} | {n_nodes} | {r.get('connected')} | {r.get('held_at_end')} | "
              f"{r.get('connect_rate', 0):.0f} | {r.get('ramp_seconds', 0):.1f} | {fails} | {split} |")
    finally:
        for n in nodes:
            n.kill()

def per_message():
    port = free_port()
    srv = node(port)
    try:
        wait_port(port)
        print("\n| send rate msg/s | deliveries | node CPU µs/delivery | loadtest CPU µs/delivery | p99 ms |")
        print("|---:|---:|---:|---:|---:|")
        for rate in (500, 1000, 2000):
            c0 = cpu_s(srv.pid)
            lt = subprocess.Popen([os.path.join(REL, "loadtest"), "chat", "--target", f"http://127.0.0.1:{port}",
                                   "--clients", "200", "--rooms", "10", "--send-rate", str(rate), "--duration", "8s", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent)
            lt_cpu = 0.0
            while lt.poll() is None:
                try:
                    lt_cpu = cpu_s(lt.pid)
                except (FileNotFoundError, ProcessLookupError):
                    break
                time.sleep(0.1)
            r = json.loads(lt.stdout.read() or "{}")
            d = max(1, r.get("delivered", 0))
            node_cpu = cpu_s(srv.pid) - c0
            print(f"| {rate} | {r.get('delivered')} | {node_cpu / d * 1e6:.1f} | {lt_cpu / d * 1e6:.1f} | {r.get('latency_ms_p99')} |")
    finally:
        srv.kill()

if __name__ == "__main__":
    connections = int(sys.argv[1]) if len(sys.argv) > 1 else 60000
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    held(connections, rate)
    per_message()
