"""chat-node's heap settings (tune_malloc in chat-node/src/main.rs) against glibc's defaults.

Two chat-nodes from the same build, one left with glibc's malloc defaults (a glibc.malloc
tunable in GLIBC_TUNABLES makes chat-node keep its hands off), take turns. Each turn:
10,000 clients arrive at 2,000/s, hold 4 s and leave (memory per client is taken during the
hold), then one `loadtest ramp` of 10,000 as fast as it can go (accepts/s and the server's CPU
per connection). Prints each turn and the medians.
Usage: python3 scripts/bench/malloc_ab.py [ROUNDS]   (default 5)
"""
import os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chat_vs_node import REL, ROOT, cpu_s, die_with_parent, free_port, loadtest, rss_kb, spawn, wait_port  # noqa: E402

CLIENTS = 10000

def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "chat-node", "-p", "loadtest"], cwd=ROOT, check=True)
    servers = []
    try:
        for name, env in [("chat-node", {}), ("chat-node, glibc malloc defaults", {"GLIBC_TUNABLES": "glibc.malloc.top_pad=131072"})]:
            port = free_port()
            servers.append({"name": name, "port": port, "proc": spawn([os.path.join(REL, "chat-node"), "--port", str(port)], env),
                            "rates": [], "cpu": [], "mem": []})
        for s in servers:
            wait_port(s["port"])
        time.sleep(1)
        net = 60
        for r in range(rounds):
            for s in servers:
                pid, target = s["proc"].pid, f"http://127.0.0.1:{s['port']}"
                net += 1
                idle = rss_kb(pid)
                hold = subprocess.Popen([os.path.join(REL, "loadtest"), "ramp", "--target", target, "--connections", str(CLIENTS), "--rate", "2000",
                                         "--hold", "4s", "--source-ips", f"127.0.{net}.1-127.0.{net}.4"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
                time.sleep(7)
                s["mem"].append((rss_kb(pid) - idle) * 1024 / CLIENTS)
                hold.wait(); time.sleep(2)
                net += 1
                c0 = cpu_s(pid)
                out = loadtest("ramp", "--target", target, "--connections", CLIENTS, "--rate", 100000, "--hold", "1s",
                               "--source-ips", f"127.0.{net}.1-127.0.{net}.4")
                s["cpu"].append((cpu_s(pid) - c0) * 1e6 / max(1, out.get("connected", 0)))
                s["rates"].append(out.get("connect_rate", 0))
                print(f"round {r + 1}: {s['name']}: {s['rates'][-1]:,.0f}/s, {s['cpu'][-1]:.0f} us per connection, "
                      f"{s['mem'][-1]:,.0f} B per held client (idle RSS {idle / 1024:.1f} MB)", file=sys.stderr, flush=True)
                time.sleep(2)
    finally:
        for s in servers:
            s["proc"].kill(); s["proc"].wait()
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print(f"| server ({rounds} rounds: hold {CLIENTS:,}, then a ramp of {CLIENTS:,}) | median accepts/s | server CPU us per connection | bytes per held client (first round) |")
    print("|---|---:|---:|---:|")
    for s in servers:
        print(f"| {s['name']} | {med(s['rates']):,.0f} | {med(s['cpu']):.0f} | {s['mem'][0]:,.0f} |")

if __name__ == "__main__":
    main()
