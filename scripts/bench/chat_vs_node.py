"""chat-node vs the reference Node.js Socket.IO server, same load, same machine.

Per server process (one process each, both on one redis-server):
- memory per connected client: N clients connect at 2,000/s and hold; (RSS in the middle of the
  hold - RSS idle) / N; the peak (which includes the burst of N disconnects at the end) is shown too
- connections accepted per second: the median of five `loadtest ramp`s as fast as they can go
  (the client shares the 2 cores), the two servers taking turns, and the server's own CPU per
  connection over its ramps
- deliveries/s at p99 <= 100 ms: `loadtest chat`, doubling the send rate until p99 > 100 ms or
  anything is lost (twice in a row), then bisecting between the last good and the first bad
  rate (3 steps)
- server CPU per delivery (user + system, from /proc) at the highest rate both servers pass
Installs socket.io 4.8.4 + @socket.io/redis-adapter + redis@5 into a temp dir from npm.
Prints a markdown table. Usage: python3 scripts/bench/chat_vs_node.py [CLIENTS]
"""
import ctypes, json, os, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REL = os.path.join(ROOT, "target/release")
ACCEPT_RAMPS = 5
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

def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def steal_s():
    """CPU seconds the hypervisor took from this machine so far (all cores)."""
    return int(open("/proc/stat").readline().split()[8]) / os.sysconf("SC_CLK_TCK")

def rss_kb(pid):
    return int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")))

def spawn(cmd, env=None, cwd=None):
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)

def loadtest(*args):
    out = subprocess.run([os.path.join(REL, "loadtest"), *map(str, args), "--json"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.stdout.strip() else {}

def start(name, start_server):
    port = free_port()
    return {"name": name, "port": port, "srv": start_server(port)}

def memory(s, clients, k):
    """Memory of a server no client has used yet: clients arriving at a steady 2,000/s (how fast
    they came should not change what a settled client costs), sampled in the middle of an 8 s
    hold."""
    srv, port = s["srv"], s["port"]
    idle = rss_kb(srv.pid)
    hold = subprocess.Popen([os.path.join(REL, "loadtest"), "ramp", "--target", f"http://127.0.0.1:{port}", "--connections", str(clients),
                             "--rate", "2000", "--hold", "8s", "--source-ips", f"127.0.{2 + k * 100}.1-127.0.{2 + k * 100}.4", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent)
    t0, series = time.time(), []
    while hold.poll() is None:
        series.append((time.time() - t0, rss_kb(srv.pid))); time.sleep(0.2)
    r = json.loads(hold.stdout.read() or "{}")
    connected = r.get("connected", 0)
    peak = max([idle] + [kb for _, kb in series])
    mid = r.get("ramp_seconds", 0) + 4
    holding = min(series, key=lambda p: abs(p[0] - mid))[1] if series else idle
    s.update(connected=connected, idle_mb=idle / 1024, bytes_per_client=(holding - idle) * 1024 / max(1, connected),
             peak_bytes_per_client=(peak - idle) * 1024 / max(1, connected))
    time.sleep(3)

def accepts(servers, clients):
    """Accepts/s: ramps as fast as they can go, the servers taking turns (the machine's speed
    drifts over minutes, and taking turns puts each round's drift on both alike); the median of
    ACCEPT_RAMPS per server (one ramp lasts about a second, and a second of the shared machine's
    noise decided single-ramp figures), and the server's CPU over its ramps per connection."""
    for s in servers:
        s.update(rates=[], ramp_cpu=0.0, ramp_connected=0)
    for i in range(ACCEPT_RAMPS):
        for k, s in enumerate(servers):
            net = 3 + i * len(servers) + k
            c0 = cpu_s(s["srv"].pid)
            r = loadtest("ramp", "--target", f"http://127.0.0.1:{s['port']}", "--connections", clients,
                         "--rate", 100000, "--hold", "1s", "--source-ips", f"127.0.{net}.1-127.0.{net}.4")
            s["ramp_cpu"] += cpu_s(s["srv"].pid) - c0
            s["ramp_connected"] += r.get("connected", 0)
            s["rates"].append(r.get("connect_rate", 0))
            time.sleep(2)
    for s in servers:
        print(f"{s['name']}: accepts/s in {ACCEPT_RAMPS} ramps: {', '.join(f'{x:,.0f}' for x in s['rates'])}", file=sys.stderr, flush=True)
        s.update(accept_per_s=sorted(s["rates"])[len(s["rates"]) // 2], accept_cpu_us=s["ramp_cpu"] * 1e6 / max(1, s["ramp_connected"]))

def deliveries(s):
    """Deliveries/s: the highest chat rate with p99 <= 100 ms and nothing lost (see the module
    doc)."""
    name, srv, port = s["name"], s["srv"], s["port"]
    def chat(rate):
        # A rate fails only if it fails twice in a row: one 70 ms stall anywhere on the
        # shared machine (the hypervisor's steal included) is 1 % of a 5 s run and decides
        # its p99 on its own. Both servers are measured the same way.
        for attempt in (1, 2):
            settle(srv.pid)
            c0, st0 = cpu_s(srv.pid), steal_s()
            c = loadtest("chat", "--target", f"http://127.0.0.1:{port}", "--clients", 200, "--rooms", 10, "--send-rate", rate, "--duration", "5s")
            ok = bool(c) and c["clients_connected"] == 200 and not c["lost"] and not c["duplicated"] and c["latency_ms_p99"] <= 100
            used = cpu_s(srv.pid) - c0
            # Progress, and why a rate failed (the table only shows the best one).
            print(f"{name}: {rate} msg/s (try {attempt}) -> {'ok' if ok else 'FAIL'}: clients {c.get('clients_connected')} {c.get('connect_failures') or ''} lost {c.get('lost')} "
                  f"duplicated {c.get('duplicated')} p99 {c.get('latency_ms_p99')} ms, CPU stolen by the hypervisor {steal_s() - st0:.2f} s"
                  if c else f"{name}: {rate} msg/s (try {attempt}) -> loadtest failed", file=sys.stderr, flush=True)
            if ok:
                break
        return ok, (c or {}).get("delivered", 0), used

    runs = {}
    good, bad, rate = 0, None, 200
    while rate <= 64000:
        ok, delivered, used = chat(rate)
        runs[rate] = (delivered, used)
        if not ok:
            bad = rate; break
        good = rate; rate *= 2
    for _ in range(3 if bad and good else 0):
        rate = (good + bad) // 2
        ok, delivered, used = chat(rate)
        runs[rate] = (delivered, used)
        if ok: good = rate
        else: bad = rate
    s.update(deliveries_per_s=runs[good][0] / 5.0 if good else 0.0, best_rate=good, runs=runs)

def settle(pid, timeout=30.0):
    """Waits until the server is idle (under 5 % of a core for half a second): above its
    capacity a server is still working off what the last run's clients wrote into their sockets
    (it reads what a client sent before it closed), and the next run would pay for it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        c0 = cpu_s(pid); time.sleep(0.5)
        if cpu_s(pid) - c0 < 0.025:
            return

def install_reference():
    """Installs the reference Node.js server into a temp dir; returns (dir, path of server.js)."""
    tmp = tempfile.mkdtemp(prefix="socketio-ref-")
    subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", tmp, "socket.io@4.8.4", "@socket.io/redis-adapter@8.3.0", "redis@5"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server_js = os.path.join(tmp, "server.js")
    with open(os.path.join(ROOT, "scripts/bench/reference-chat-server.js")) as src, open(server_js, "w") as dst:
        dst.write(src.read())
    return tmp, server_js

def start_redis():
    """A throwaway redis-server on a free port; returns (process, URL) once it listens."""
    rport = free_port()
    redis = spawn(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"])
    wait_port(rport)
    return redis, f"redis://127.0.0.1:{rport}"

def main():
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    tmp, server_js = install_reference()
    redis, url = start_redis()
    servers = []
    try:
        # Each server's memory is taken just after it starts (a Node.js process left idle for a
        # minute first shrinks its heap: 56 MB idle instead of 81, which moved its per-client
        # figure from 13 to 15 KB); then the accept ramps take turns; then chat, one at a time.
        for k, (name, how) in enumerate([
            ("chat-node", lambda p: spawn([os.path.join(REL, "chat-node"), "--port", str(p), "--redis-url", url],
                                          {"CHAT_RATE_PER_SEC": "1000", "CHAT_RATE_BURST": "1000", "CHAT_MAX_CONNECTIONS": "19000"})),
            ("Node.js socket.io 4.8.4", lambda p: spawn(["node", server_js], {"PORT": str(p), "REDIS_URL": url}, cwd=tmp)),
        ]):
            servers.append(start(name, how))
            wait_port(servers[-1]["port"]); time.sleep(1)
            memory(servers[-1], clients, k)
        accepts(servers, clients)
        for s in servers:
            deliveries(s)
    finally:
        for s in servers:
            s["srv"].kill(); s["srv"].wait()
        redis.kill(); redis.wait()
    ours, ref = servers
    # Server CPU per delivery at the highest doubling rate (200 * 2^k) both servers passed.
    common = 200
    while common * 2 <= min(ours["best_rate"], ref["best_rate"]):
        common *= 2
    def us_per_delivery(r):
        delivered, used = r["runs"].get(common, (0, 0))
        return used * 1e6 / delivered if delivered else float("nan")
    print(f"| server (one process, {clients:,} clients) | idle RSS MB | memory per client (holding) | peak per client | accepts/s | server CPU us per connection | deliveries/s at p99 <= 100 ms | CPU us per delivery at {common:,} msg/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in (ours, ref):
        print(f"| {r['name']} | {r['idle_mb']:.1f} | {r['bytes_per_client'] / 1024:.1f} KB | {r['peak_bytes_per_client'] / 1024:.1f} KB | {r['accept_per_s']:,.0f} | {r['accept_cpu_us']:.0f} | {r['deliveries_per_s']:,.0f} | {us_per_delivery(r):.1f} |")
    ratio = lambda a, b: a / b if b else float("inf")
    print(f"\nchat-node vs Node.js: memory per client {ratio(ours['bytes_per_client'], ref['bytes_per_client']):.2f}x, "
          f"accepts {ratio(ours['accept_per_s'], ref['accept_per_s']):.1f}x, CPU per connection {ratio(ours['accept_cpu_us'], ref['accept_cpu_us']):.2f}x, deliveries {ratio(ours['deliveries_per_s'], ref['deliveries_per_s']):.1f}x, "
          f"CPU per delivery {ratio(us_per_delivery(ours), us_per_delivery(ref)):.2f}x "
          f"(best send rates: chat-node {ours['best_rate']:,} msg/s, Node.js {ref['best_rate']:,} msg/s)")

if __name__ == "__main__":
    main()
