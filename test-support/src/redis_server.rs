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
    /// With TLS only (no plain port): the directory holding its self-signed certificate.
    tls: Option<tempfile::TempDir>,
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
            tls: None,
        };
        s.launch()?;
        Ok(s)
    }

    /// A server that speaks only TLS (a fresh self-signed certificate for 127.0.0.1, made with
    /// the `openssl` CLI); [`url`](Self::url) is `rediss://...#insecure` (the certificate is
    /// not in any trust store: the TLS transport is what is under test).
    pub fn start_tls() -> Self {
        let bin = find_tool("redis-server", &[PathBuf::from("/usr/bin")], INSTALL)
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("temp dir for the certificate");
        let openssl = find_tool(
            "openssl",
            &[PathBuf::from("/usr/bin")],
            "apt-get install -y openssl",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ok = Command::new(openssl)
            .current_dir(dir.path())
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "openssl could not make a test certificate");
        let mut s = Self {
            bin,
            port: free_port(),
            process: None,
            tls: Some(dir),
        };
        s.launch().unwrap_or_else(|e| panic!("{e}"));
        s
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(dir) => {
                let f = |n: &str| dir.path().join(n).display().to_string();
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args([
                        "--tls-cert-file",
                        &f("cert.pem"),
                        "--tls-key-file",
                        &f("key.pem"),
                    ])
                    .args([
                        "--tls-ca-cert-file",
                        &f("cert.pem"),
                        "--tls-auth-clients",
                        "no",
                    ])
            }
        };
        cmd.args(["--bind", "127.0.0.1", "--save", ""])
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

    /// `redis://127.0.0.1:PORT/`, or `rediss://127.0.0.1:PORT/#insecure` with TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(_) => format!("rediss://127.0.0.1:{}/#insecure", self.port),
        }
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
