"""How close chat-node's accept rate is to what this machine allows, next to Node.js.

Three servers take turns, ramp after ramp, under the same `loadtest ramp` (10,000 websocket
connections as fast as it can open them; the client shares the 2 cores):
- chat-node (on a redis-server, as in chat_vs_node.py),
- the handshake floor (chat-node/examples/handshake_floor.rs): the same bytes, packets and
  socket options as chat-node's handshake and nothing else, the least any server can do here,
- the reference Node.js Socket.IO server (socket.io 4.8.4 on the same redis-server).
Taking turns puts each round's machine noise on all of them alike. Prints each server's median
accepts/s (and range) and its own CPU per connection, and the ratios.
Usage: python3 scripts/bench/accept_floor.py [ROUNDS]   (default 5)
"""
import os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chat_vs_node import REL, ROOT, cpu_s, free_port, install_reference, loadtest, spawn, start_redis, steal_s, wait_port  # noqa: E402

CONNECTIONS = 10000

def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "chat-node", "-p", "loadtest", "--example", "handshake_floor"], cwd=ROOT, check=True)
    tmp, server_js = install_reference()
    redis, url = start_redis()
    servers = []
    try:
        for name, start in [
            ("chat-node", lambda p: spawn([os.path.join(REL, "chat-node"), "--port", str(p), "--redis-url", url], {"CHAT_MAX_CONNECTIONS": "19000"})),
            ("handshake floor", lambda p: spawn([os.path.join(REL, "examples/handshake_floor"), str(p)])),
            ("Node.js socket.io 4.8.4", lambda p: spawn(["node", server_js], {"PORT": str(p), "REDIS_URL": url}, cwd=tmp)),
        ]:
            port = free_port()
            servers.append({"name": name, "port": port, "proc": start(port), "rates": [], "cpu": 0.0, "conns": 0})
        for s in servers:
            wait_port(s["port"])
        time.sleep(1)
        k = 0
        for r in range(rounds):
            for s in servers:
                k += 1
                c0, st0 = cpu_s(s["proc"].pid), steal_s()
                out = loadtest("ramp", "--target", f"http://127.0.0.1:{s['port']}", "--connections", CONNECTIONS, "--rate", 100000,
                               "--hold", "1s", "--source-ips", f"127.0.{40 + k}.1-127.0.{40 + k}.4")
                s["cpu"] += cpu_s(s["proc"].pid) - c0
                s["conns"] += out.get("connected", 0)
                s["rates"].append(out.get("connect_rate", 0))
                print(f"round {r + 1}: {s['name']}: {out.get('connect_rate', 0):,.0f}/s ({out.get('connected', 0)} connected), "
                      f"CPU stolen by the hypervisor {steal_s() - st0:.2f} s", file=sys.stderr, flush=True)
                time.sleep(2)
    finally:
        for s in servers:
            s["proc"].kill(); s["proc"].wait()
        redis.kill(); redis.wait()
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print(f"| server ({rounds} rounds of {CONNECTIONS:,} connections) | median accepts/s | range | server CPU us per connection |")
    print("|---|---:|---:|---:|")
    for s in servers:
        print(f"| {s['name']} | {med(s['rates']):,.0f} | {min(s['rates']):,.0f}-{max(s['rates']):,.0f} | {s['cpu'] * 1e6 / max(1, s['conns']):.0f} |")
    ours, floor, ref = (med(s["rates"]) for s in servers)
    print(f"\nchat-node / Node.js {ours / ref:.1f}x, floor / Node.js {floor / ref:.1f}x, chat-node / floor {ours / floor:.2f}; "
          f"per round chat-node / Node.js: {', '.join(f'{a / b:.1f}x' for a, b in zip(servers[0]['rates'], servers[2]['rates']))}")

if __name__ == "__main__":
    main()
