"""Agent benchmark: CPU per count and RSS at 10k/50k/100k established connections on one port,
beside `ss`, a /proc/net/tcp parse (the agent's own fallback) and `netstat -tn`.

Connections are held by helper processes (agent/tests/hold.py): SO_REUSEPORT acceptors and
clients from several loopback source addresses, each under the 20,000-open-file limit; they
reset their connections on exit, and each level waits until no earlier run's TIME_WAIT sockets
are left, so every level walks the same table. Each method is measured in three alternating
rounds; the table shows medians, the spread and the CPU the hypervisor stole meanwhile.
Prints a markdown table. Usage: python3 scripts/bench/agent_bench.py [LEVELS...]
"""
import ctypes, os, resource, signal, socket, subprocess, sys, tempfile, time, urllib.request

_libc = ctypes.CDLL("libc.so.6", use_errno=True)

def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no helper outlives the benchmark

NOBODY = 65534

def _as_service_user():
    """The measured commands run as the agent does in production (systemd DynamicUser, no
    capabilities): as root the kernel adds the socket mark to every netlink reply."""
    _die_with_parent()
    if os.geteuid() == 0:
        os.setgroups([]); os.setgid(NOBODY); os.setuid(NOBODY)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLD = os.path.join(ROOT, "agent/tests/hold.py")
AGENT = os.path.join(ROOT, "target/release/connscale-agent")
PER_PROC = 15_000
ROUNDS = 3

def free_port():
    # Wildcard: the port must be free on every address, as the helpers' listeners need it.
    s = socket.socket(); s.bind(("0.0.0.0", 0)); p = s.getsockname()[1]; s.close(); return p

def helper(*args):
    p = subprocess.Popen([sys.executable, HOLD, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
    assert p.stdout.readline().strip() == b"ready", args
    return p

def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

def shell_cost(cmd, n):
    before = children_cpu()
    for _ in range(n):
        subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL, check=True, preexec_fn=_as_service_user)
    return (children_cpu() - before) / n * 1000

def steal_s():
    """CPU seconds the hypervisor took from this VM so far (/proc/stat `steal`)."""
    return int(open("/proc/stat").readline().split()[8]) / os.sysconf("SC_CLK_TCK")

def time_wait():
    """TCP sockets in TIME_WAIT now: each sits in the table every count walks."""
    line = next(l for l in open("/proc/net/sockstat") if l.startswith("TCP:"))
    f = line.split()
    return int(f[f.index("tw") + 1])

def wait_for_quiet_table(limit=100, seconds=75):
    """Waits (TIME_WAIT lasts 60 s) until earlier runs' sockets have left the table."""
    deadline = time.time() + seconds
    while time_wait() > limit and time.time() < deadline:
        time.sleep(1)
    return time_wait()

def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]

def agent_cost(port, force_proc, seconds=4):
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f'ports = [{port}]\nsample_interval = "20ms"\nforce_proc = {"true" if force_proc else "false"}\n[health]\ncap = 10000000\n[cloudwatch]\nmode = "off"\n')
    cfg.close()
    hp = free_port()
    os.chmod(cfg.name, 0o644)
    a = subprocess.Popen([AGENT, "--config", cfg.name, "--bind", f"127.0.0.1:{hp}", "--quiet"], stderr=subprocess.DEVNULL, preexec_fn=_as_service_user)
    time.sleep(1.5)
    def stat():
        f = open(f"/proc/{a.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    def samples():
        m = urllib.request.urlopen(f"http://127.0.0.1:{hp}/metrics").read().decode()
        return int(next(l.split()[1] for l in m.splitlines() if l.startswith("connscale_samples_total ")))
    t0, s0 = stat(), samples()
    time.sleep(seconds)
    t1, s1 = stat(), samples()
    rss = int(next(l.split()[1] for l in open(f"/proc/{a.pid}/status") if l.startswith("VmRSS"))) / 1024
    body = urllib.request.urlopen(f"http://127.0.0.1:{hp}/health").read().decode()
    a.terminate(); a.wait()
    os.unlink(cfg.name)
    tick = os.sysconf("SC_CLK_TCK")
    return (t1 - t0) / tick / max(1, s1 - s0) * 1000, rss, body

def main():
    levels = [int(x) for x in sys.argv[1:]] or [10_000, 50_000, 100_000]
    if subprocess.run("command -v netstat", shell=True, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run("apt-get install -y -qq net-tools >/dev/null 2>&1", shell=True)
    print("| established | agent netlink ms/count | agent RSS MB | /proc parse ms/count (agent fallback) | ss ms/count | netstat -tn ms/count | netlink vs ss | netlink vs /proc | netlink / /proc range | TIME_WAIT at start | steal s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for n in levels:
        tw = wait_for_quiet_table()
        port = free_port()
        procs = [helper("serve", port) for _ in range((n + PER_PROC - 1) // PER_PROC)]
        left, i = n, 0
        while left > 0:
            k = min(PER_PROC, left)
            procs.append(helper("connect", port, k, f"127.0.1.{i + 2}"))
            left -= k; i += 1
        try:
            time.sleep(2)
            stolen = steal_s()
            # Rounds alternate the methods, so a slow spell of the machine hits both; medians.
            nls, prs, sss = [], [], []
            reps = 10 if n <= 50_000 else 5
            for _ in range(ROUNDS):
                nl, rss, health = agent_cost(port, False)
                if f'"connections":{n}' not in health:
                    sys.exit(f"at {n:,} connections the agent reported {health}")
                nls.append(nl)
                prs.append(agent_cost(port, True)[0])
                sss.append(shell_cost(f"ss -tn state established '( sport = :{port} )' | wc -l", reps))
            ns = shell_cost("netstat -tn | grep -c ESTABLISHED", max(2, reps // 2))
            nl, pr, ss = median(nls), median(prs), median(sss)
            stolen = steal_s() - stolen
            spread = f"{min(nls):.1f}-{max(nls):.1f} / {min(prs):.0f}-{max(prs):.0f}"
            print(f"| {n:,} | {nl:.2f} | {rss:.1f} | {pr:.1f} | {ss:.1f} | {ns:.1f} | {ss / nl:.1f}x | {pr / nl:.1f}x | {spread} | {tw} | {stolen:.1f} |", flush=True)
        finally:
            for p in procs:
                p.kill(); p.wait()
            time.sleep(2)

main()
