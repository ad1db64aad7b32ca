"""chat-node vs the reference Node.js Socket.IO server, same load, same machine.

Per server process (one process each, both on one redis-server):
- memory per connected client: (RSS holding N idle clients - RSS idle) / N
- connections accepted per second: `loadtest ramp` as fast as it can
- deliveries/s at p99 <= 100 ms: `loadtest chat`, raising the send rate until p99 > 100 ms or
  anything is lost
Installs socket.io 4.8.4 + @socket.io/redis-adapter + redis@5 into a temp dir from npm.
Prints a markdown table. Usage: python3 scripts/bench/chat_vs_node.py [CLIENTS]
"""
import ctypes, json, os, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REL = os.path.join(ROOT, "target/release")
_libc = ctypes.CDLL("libc.so.6")

def die_with_parent():
    _libc.prctl(1, signal.SIGKILL)

def free_port():
    s = socket.socket(); s.bind(("0.0.0.0", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(p, t=20):
    end = time.time() + t
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", p), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {p}")

def rss_kb(pid):
    return int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")))

def spawn(cmd, env=None, cwd=None):
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)

def loadtest(*args):
    out = subprocess.run([os.path.join(REL, "loadtest"), *map(str, args), "--json"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.stdout.strip() else {}

def measure(name, start_server, clients):
    port = free_port()
    srv = start_server(port)
    try:
        wait_port(port); time.sleep(1)
        idle = rss_kb(srv.pid)
        ramp = subprocess.Popen([os.path.join(REL, "loadtest"), "ramp", "--target", f"http://127.0.0.1:{port}", "--connections", str(clients),
                                 "--rate", "100000", "--hold", "8s", "--source-ips", "127.0.2.1-127.0.2.4", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent)
        peak = idle
        while ramp.poll() is None:
            peak = max(peak, rss_kb(srv.pid)); time.sleep(0.2)
        r = json.loads(ramp.stdout.read() or "{}")
        connected = r.get("connected", 0)
        per_client = (peak - idle) * 1024 / max(1, connected)
        accept = r.get("connect_rate", 0)
        time.sleep(2)
        best, rate = 0.0, 200
        while rate <= 64000:
            c = loadtest("chat", "--target", f"http://127.0.0.1:{port}", "--clients", 200, "--rooms", 10, "--send-rate", rate, "--duration", "5s")
            if not c or c["lost"] or c["duplicated"] or c["latency_ms_p99"] > 100:
                break
            best = c["delivered"] / 5.0
            rate *= 2
        return {"name": name, "connected": connected, "idle_mb": idle / 1024, "bytes_per_client": per_client, "accept_per_s": accept, "deliveries_per_s": best}
    finally:
        srv.kill(); srv.wait()

def main():
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    tmp = tempfile.mkdtemp(prefix="socketio-ref-")
    subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", tmp, "socket.io@4.8.4", "@socket.io/redis-adapter@8.3.0", "redis@5"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server_js = os.path.join(tmp, "server.js")
    with open(os.path.join(ROOT, "scripts/bench/reference-chat-server.js")) as src, open(server_js, "w") as dst:
        dst.write(src.read())
    rport = free_port()
    redis = spawn(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"])
    wait_port(rport)
    url = f"redis://127.0.0.1:{rport}"
    try:
        ours = measure("chat-node", lambda p: spawn([os.path.join(REL, "chat-node"), "--port", str(p), "--redis-url", url],
                                                    {"CHAT_RATE_PER_SEC": "1000", "CHAT_RATE_BURST": "1000", "CHAT_MAX_CONNECTIONS": "19000"}), clients)
        ref = measure("Node.js socket.io 4.8.4", lambda p: spawn(["node", server_js], {"PORT": str(p), "REDIS_URL": url}, cwd=tmp), clients)
    finally:
        redis.kill(); redis.wait()
    print(f"| server (one process, {clients:,} clients) | idle RSS MB | memory per client | accepts/s | deliveries/s at p99 <= 100 ms |")
    print("|---|---:|---:|---:|---:|")
    for r in (ours, ref):
        print(f"| {r['name']} | {r['idle_mb']:.1f} | {r['bytes_per_client'] / 1024:.1f} KB | {r['accept_per_s']:,.0f} | {r['deliveries_per_s']:,.0f} |")
    ratio = lambda a, b: a / b if b else float("inf")
    print(f"\nchat-node vs Node.js: memory per client {ratio(ours['bytes_per_client'], ref['bytes_per_client']):.2f}x, "
          f"accepts {ratio(ours['accept_per_s'], ref['accept_per_s']):.1f}x, deliveries {ratio(ours['deliveries_per_s'], ref['deliveries_per_s']):.1f}x")

if __name__ == "__main__":
    main()
