//! A throwaway `redis-server` on its own port, with persistence off.

use crate::process::{ServerProcess, find_tool, free_port, wait_for_port};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const INSTALL: &str = "apt-get install -y redis-server (or run scripts/test, which installs it)";

/// A running `redis-server` (`--save "" --appendonly no`), stopped on drop.
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    process: Option<ServerProcess>,
}

impl RedisServer {
    /// Starts a server on a free port; panics with a one-line install hint if it cannot.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start() -> Result<Self, String> {
        let bin = find_tool("redis-server", &[PathBuf::from("/usr/bin")], INSTALL)
            .map_err(|e| e.to_string())?;
        let mut s = Self {
            bin,
            port: free_port(),
            process: None,
        };
        s.launch()?;
        Ok(s)
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args([
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ])
        .args(["--maxclients", "4064"]);
        let p = ServerProcess::spawn("redis", cmd)
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        if !wait_for_port(self.addr(), Duration::from_secs(10)) {
            return Err(format!(
                "redis-server did not listen on {} within 10 s",
                self.addr()
            ));
        }
        self.process = Some(p);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// Kills the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            p.signal(libc::SIGKILL);
            drop(p);
        }
    }

    /// Starts it again on the same port (after [`kill`](Self::kill)), with empty data.
    pub fn restart(&mut self) {
        self.kill();
        // The port may linger briefly after a kill; retry the bind for a few seconds.
        for _ in 0..50 {
            if self.launch().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server could not restart on port {}", self.port);
    }
}
