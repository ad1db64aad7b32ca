"""No silent loss under overload: `loadtest chat` past what two chat-nodes on one redis-server
carry on this machine, with Redis's default `client-output-buffer-limit pubsub` and with a
tight one (Redis then drops the nodes' subscriptions as they fall behind). Per run: deliveries,
p99, lost while connected (must be 0), missed during a disconnect and recovered, lost for good,
reconnects, and the nodes' chat_disconnects_total by reason.
Usage: python3 scripts/bench/overload_loss.py [RATE ...]   (release builds in target/release)
"""
import json, os, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_fanout import REL, free_port, spawn, wait_port, node  # noqa: E402

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
    return out


def chat(ports, rate):
    targets = [a for p in ports for a in ("--target", f"http://127.0.0.1:{p}")]
    cmd = [os.path.join(REL, "loadtest"), "chat", *targets, "--clients", "200", "--rooms", "10",
           "--send-rate", str(rate), "--duration", "5s", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    return json.loads(out.stdout) if out.stdout.strip() else {}


def main():
    rates = [int(r) for r in sys.argv[1:]] or [20000, 60000]
    print("| Redis pubsub limit | send rate msg/s | delivered/expected | p99 ms | lost while connected | "
          "recovered after reconnect | lost for good (never delivered) | reconnects | disconnects slow / missed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, limit in LIMITS.items():
        for rate in rates:
            with tempfile.TemporaryDirectory() as d:
                r, url = redis(d, limit)
                nodes = [node(url, n) for n in ("a", "b")]
                try:
                    time.sleep(1)
                    c = chat([p for _, p in nodes], rate)
                    k = [disconnects(p) for _, p in nodes]
                finally:
                    for p, _ in nodes:
                        p.kill()
                    r.kill()
            slow, missed = (sum(x.get(w, 0) for x in k) for w in ("slow", "missed"))
            print(f"| {name} | {rate:,} | {c.get('delivered')}/{c.get('expected_deliveries')} | {c.get('latency_ms_p99')} | "
                  f"{c.get('lost_while_connected')} | {c.get('recovered_after_reconnect')} | {c.get('lost_for_good')} "
                  f"({c.get('never_delivered')}) | {c.get('reconnects')} | {slow} / {missed} |", flush=True)


if __name__ == "__main__":
    main()
