"""No silent loss under overload: `loadtest chat` past what two chat-nodes on one redis-server
carry on this machine, with Redis's default `client-output-buffer-limit pubsub` and with a
tight one (Redis then drops the nodes' subscriptions as they fall behind), and the same runs
against two processes of the reference Node.js Socket.IO server (socket.io 4.8.4 +
@socket.io/redis-adapter, unmodified, `scripts/reference-server`) on their own fresh Redis.
Per run: deliveries, p99, lost while connected (must be 0), own messages echoed back (must be
0), missed during a disconnect and recovered, lost for good, reconnects, and chat-node's chat_disconnects_total by reason (the
reference server has no such count: it never disconnects a client that falls behind).
Usage: python3 scripts/bench/overload_loss.py [--only chat-node|node] [--repeat N] [RATE ...]
(each row: N runs, their counts summed)
(release builds in target/release; npm for the reference server)
"""
import json, os, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chat_vs_node import ROOT, spawn  # noqa: E402
from cluster_fanout import chat, free_port, wait_port, node  # noqa: E402

LIMITS = {"default": None, "tight (pubsub 256kb 64kb 1)": "pubsub 262144 65536 1"}


def redis(d, limit):
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if limit:
        args += ["--client-output-buffer-limit", limit]
    p = spawn(args, cwd=d)
    wait_port(port)
    return p, f"redis://127.0.0.1:{port}"


def disconnects(port):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        if line.startswith("chat_disconnects_total{"):
            reason = line.split('"')[1]
            out[reason] = out.get(reason, 0) + int(float(line.split()[-1]))
        elif line.startswith(("chat_publish_failed_total ", "chat_publish_retried_total ", "chat_rate_limited_total ")):
            out[line.split()[0]] = int(float(line.split()[-1]))
    return out


def reference_server():
    """The reference server's server.js, installed once by scripts/reference-server."""
    out = subprocess.run([os.path.join(ROOT, "scripts/reference-server")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def node_js(server_js, url):
    """One reference server process on a free port: (process, port)."""
    port = free_port()
    p = spawn(["node", server_js], {"PORT": str(port), "REDIS_URL": url}, cwd=os.path.dirname(server_js))
    wait_port(port)
    return p, port


def run(server, limit, rate, server_js):
    """One run on a fresh Redis and fresh server processes: (loadtest report, disconnects)."""
    with tempfile.TemporaryDirectory() as d:
        r, url = redis(d, limit)
        nodes = []
        try:
            for n in ("a", "b"):
                nodes.append(node(url, n) if server == "chat-node" else node_js(server_js, url))
            time.sleep(1)
            c = chat([p for _, p in nodes], rate)
            k = [disconnects(p) for _, p in nodes] if server == "chat-node" else None
        finally:
            for p, _ in nodes:
                p.kill(); p.wait()
            r.kill(); r.wait()
    return c, k


SUMMED = ("delivered", "expected_deliveries", "lost_while_connected", "echoed", "recovered_after_reconnect", "lost_for_good",
          "never_delivered", "reconnects", "not_recovered")


def runs(server, limit, rate, server_js, repeat):
    """`repeat` runs: their reports summed (p99: the worst run's), how many lost deliveries
    while connected, and chat-node's disconnects summed."""
    total, worst, lossy, kicks = {k: 0 for k in SUMMED}, 0.0, 0, None
    for _ in range(repeat):
        c, k = run(server, limit, rate, server_js)
        for key in SUMMED:
            total[key] += c.get(key) or 0
        worst = max(worst, c.get("latency_ms_p99") or 0.0)
        lossy += bool(c.get("lost_while_connected"))
        if k is not None:
            kicks = [a + sum(x.get(w, 0) for x in k) for a, w in zip(kicks or [0, 0], ("slow", "missed"))]
            print(f"  {server} {limit} {rate}: publishes failed {sum(x.get('chat_publish_failed_total', 0) for x in k)}, "
                  f"retried {sum(x.get('chat_publish_retried_total', 0) for x in k)}, "
                  f"rate-limited {sum(x.get('chat_rate_limited_total', 0) for x in k)}", file=sys.stderr, flush=True)
        if c.get("lost_while_connected_samples"):
            print(f"  {server}: lost while connected (receiver, sender, n): {c['lost_while_connected_samples'][:5]}",
                  file=sys.stderr, flush=True)
    return total, worst, lossy, kicks


def main():
    args = sys.argv[1:]
    servers = ["chat-node", "Node.js"]
    repeat = 1
    while args[:1] in (["--only"], ["--repeat"]):
        if args[0] == "--only":
            servers = [{"chat-node": "chat-node", "node": "Node.js"}[args[1]]]
        else:
            repeat = int(args[1])
        args = args[2:]
    rates = [int(r) for r in args] or [32000, 64000]
    server_js = reference_server() if "Node.js" in servers else None
    print("| server (2 processes) | Redis pubsub limit | send rate msg/s | runs (with a loss while connected) | delivered/expected | "
          "worst p99 ms | lost while connected | own echoed | recovered after reconnect | lost for good (never delivered) | "
          "reconnects (not recovered) | disconnects slow / missed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, limit in LIMITS.items():
        for rate in rates:
            for server in servers:
                t, worst, lossy, k = runs(server, limit, rate, server_js, repeat)
                kicks = "—" if k is None else " / ".join(map(str, k))
                print(f"| {server} | {name} | {rate:,} | {repeat} ({lossy}) | {t['delivered']}/{t['expected_deliveries']} | {worst} | "
                      f"{t['lost_while_connected']} | {t['echoed']} | {t['recovered_after_reconnect']} | {t['lost_for_good']} "
                      f"({t['never_delivered']}) | {t['reconnects']} ({t['not_recovered']}) | {kicks} |", flush=True)


if __name__ == "__main__":
    main()
