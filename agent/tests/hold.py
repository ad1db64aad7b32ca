"""Holds TCP connections for the agent's tests (one process stays under the 20,000-file limit).

serve PORT            accept forever on 127.0.0.1:PORT (SO_REUSEPORT: run several), hold every socket
connect PORT N SRC    open N connections from source address SRC, print "ready", hold until stdin closes
churn PORT SRC        connect and close as fast as possible until stdin closes
netns PORT N          (run under `unshare -n`) bring lo up, hold N connections to PORT on it
"""
import socket, subprocess, sys, threading

# SO_LINGER {on, 0 s}: a close (or this process's death) resets the connection, so neither end
# lingers in TIME_WAIT, where it would still sit in the table the next measurement walks.
RESET_ON_CLOSE = b"\x01\x00\x00\x00\x00\x00\x00\x00"

def serve(port):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    l.bind(("0.0.0.0", port))  # a wildcard listener reserves the port on every address
    l.listen(4096)
    print("ready", flush=True)
    held = []
    while True:
        c, _ = l.accept()
        held.append(c)

def connect(port, n, src):
    held = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        held.append(s)
    print("ready", flush=True)
    sys.stdin.read()

def churn(port, src):
    stop = threading.Event()
    def loop():
        while not stop.is_set():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
            s.bind((src, 0))
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                pass
            s.close()
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()

def netns(port, n):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    l = socket.socket()
    l.bind(("127.0.0.1", port))
    l.listen(n + 16)
    held = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        held.append(c)
        held.append(l.accept()[0])
    print("ready", flush=True)
    sys.stdin.read()

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(int(sys.argv[2]))
    elif cmd == "connect":
        connect(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif cmd == "netns":
        netns(int(sys.argv[2]), int(sys.argv[3]))
    else:
        churn(int(sys.argv[2]), sys.argv[3])
