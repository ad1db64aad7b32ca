//! Child processes that cannot outlive the test that started them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tool a test needs is not installed; says which and how to get it, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingTool {
    pub tool: String,
    pub install: String,
}

impl MissingTool {
    pub fn new(tool: &str, install: &str) -> Self {
        Self {
            tool: tool.to_string(),
            install: install.to_string(),
        }
    }
}

impl std::fmt::Display for MissingTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` not found; install it with: {}",
            self.tool, self.install
        )
    }
}

/// Finds `tool`: first in the `extra` directories (e.g. the test venv), then on `PATH`.
pub fn find_tool(tool: &str, extra: &[PathBuf], install: &str) -> Result<PathBuf, MissingTool> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    extra
        .iter()
        .chain(path_dirs.iter())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| MissingTool::new(tool, install))
}

/// A TCP port free on every address, for a test server to bind.
///
/// Chosen below the kernel's ephemeral range: a port from that range can be taken at any moment
/// as the source port of some other test's client on 127.0.0.x, and a server binding the
/// wildcard address would then fail with "address in use". Ports are tried from a per-process
/// offset so that tests running in parallel rarely probe the same ones.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u32>().ok())
        })
        .unwrap_or(32_768);
    let (first, last) = (10_000u32, low.saturating_sub(1).max(10_001));
    let span = last - first;
    let base = (std::process::id().wrapping_mul(7_919)) % span;
    for _ in 0..span {
        let port = (first + (base + NEXT.fetch_add(1, Ordering::Relaxed) * 13) % span) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    0
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether a process with this PID exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A server child process, killed (SIGTERM, then SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Option<Child>,
}

impl ServerProcess {
    /// Spawns `cmd` with the kernel told to kill it if this process dies.
    /// Output goes to a log file in the temp dir, whose path is printed on failure.
    pub fn spawn(name: &str, mut cmd: Command) -> std::io::Result<Self> {
        let log =
            std::env::temp_dir().join(format!("connscale-test-{name}-{}.log", std::process::id()));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a signal (e.g. `libc::SIGKILL` to simulate a crash, `SIGTERM` to drain).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Whether the child has exited; reaps it if so.
    pub fn has_exited(&mut self) -> bool {
        matches!(
            self.child.as_mut().map(|c| c.try_wait()),
            Some(Ok(Some(_))) | None
        )
    }

    /// Waits up to `timeout` for the child to exit on its own; returns its exit code if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the child now: SIGTERM, a grace period, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::error::Error for MissingTool {}
