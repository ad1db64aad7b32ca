"""Deliveries/s through one redis-server vs a 3-master Redis Cluster, same machine, same load.

Two release chat-nodes share the Redis (one server, or a cluster of 3 masters without
replicas, where every room's channel, sequence and stream live on its own slot's shard); one
`loadtest chat` process (200 clients over both nodes, 10 rooms, so 19 deliveries per message,
most of them across nodes) sends at each rate for 5 s. Per run: deliveries/s, p99, lost and
duplicated, and each redis-server's CPU over the run (how the fan-out work is spread).
Everything shares the 2 cores. Usage: python3 scripts/bench/cluster_fanout.py [--single]
[RATE ...] (default 4000 8000 16000 24000 msg/s; --single: the one-server setup only); needs
`cargo build --release -p chat-node -p loadtest`. CHAT_NODE=path runs another chat-node build
(e.g. an older commit's, for an A/B on one Redis).
"""
import json, os, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chat_vs_node import REL, cpu_s, spawn, wait_port  # noqa: E402


def free_port():
    while True:
        s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
        if p < 55000:  # a cluster node's bus listens on port + 10000
            return p


def redis(port, d, cluster):
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if cluster:
        args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "2000"]
    p = spawn(args, cwd=d)
    wait_port(port)
    return p


def start_single(d):
    port = free_port()
    return [redis(port, d, False)], f"redis://127.0.0.1:{port}"


def start_cluster(d, masters=3):
    ports = [free_port() for _ in range(masters)]
    procs = [redis(p, d, True) for p in ports]
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"], check=True, stdout=subprocess.DEVNULL)
    for p in ports:
        while "cluster_state:ok" not in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True, text=True).stdout:
            time.sleep(0.1)
    return procs, "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def node(url, name):
    port = free_port()
    env = {"CHAT_RATE_PER_SEC": "1000", "CHAT_RATE_BURST": "1000", "CHAT_MAX_CONNECTIONS": "19000"}
    p = spawn([os.environ.get("CHAT_NODE", os.path.join(REL, "chat-node")), "--port", str(port), "--node-id", name, "--redis-url", url], env)
    wait_port(port)
    return p, port


def chat(ports, rate):
    targets = [a for p in ports for a in ("--target", f"http://127.0.0.1:{p}")]
    out = subprocess.run([os.path.join(REL, "loadtest"), "chat", *targets, "--clients", "200", "--rooms", "10",
                          "--send-rate", str(rate), "--duration", "5s", "--json"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.stdout.strip() else {}


def run(setup, rates):
    rows = []
    with tempfile.TemporaryDirectory() as d:
        servers, url = (start_single if setup == "one redis-server" else start_cluster)(d)
        nodes = [node(url, n) for n in ("a", "b")]
        try:
            time.sleep(1)
            for rate in rates:
                c0 = [cpu_s(s.pid) for s in servers]
                n0 = sum(cpu_s(p.pid) for p, _ in nodes)
                c = chat([p for _, p in nodes], rate)
                used = [cpu_s(s.pid) - x for s, x in zip(servers, c0)]
                node_cpu = sum(cpu_s(p.pid) for p, _ in nodes) - n0
                rows.append((setup, rate, c, used, node_cpu))
                print(f"{setup}: {rate} msg/s -> {c.get('delivered')} delivered, p99 {c.get('latency_ms_p99')} ms, lost {c.get('lost')}, "
                      f"nodes CPU {node_cpu:.2f} s, redis CPU {' / '.join(f'{u:.2f}' for u in used)} s", file=sys.stderr, flush=True)
                time.sleep(2)
        finally:
            for p, _ in nodes:
                p.kill()
            for s in servers:
                s.kill()
    return rows


def main():
    single = "--single" in sys.argv[1:]
    rates = [int(r) for r in sys.argv[1:] if r != "--single"] or [4000, 8000, 16000, 24000]
    rows = run("one redis-server", rates) + ([] if single else run("3-master cluster", rates))
    print("| Redis | send rate msg/s | deliveries/s | p99 ms | lost | duplicated | clients | both nodes' CPU s | redis CPU s per server |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for setup, rate, c, used, node_cpu in rows:
        print(f"| {setup} | {rate:,} | {c.get('delivered', 0) / 5.0:,.0f} | {c.get('latency_ms_p99')} | {c.get('lost')} | "
              f"{c.get('duplicated')} | {c.get('clients_connected')} | {node_cpu:.2f} | {' / '.join(f'{u:.2f}' for u in used)} |")


if __name__ == "__main__":
    main()
