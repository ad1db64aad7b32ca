//! A `moto_server` (the AWS emulator) on its own port, reset between tests.

use crate::process::{ServerProcess, find_tool, free_port, wait_for_port};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const INSTALL: &str =
    "scripts/test (creates target/venv with moto[server]) or pip install 'moto[server]'";

/// A running `moto_server`, stopped on drop. One port serves every AWS service.
#[derive(Debug)]
pub struct MotoServer {
    port: u16,
    process: Option<ServerProcess>,
}

impl MotoServer {
    /// Starts moto on a free port; panics with a one-line install hint if it cannot.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start() -> Result<Self, String> {
        let mut s = Self {
            port: free_port(),
            process: None,
        };
        s.launch()?;
        Ok(s)
    }

    fn launch(&mut self) -> Result<(), String> {
        let venv = crate::workspace_root().join("target/venv/bin");
        let bin = find_tool("moto_server", &[venv], INSTALL).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &self.port.to_string()]);
        let p = ServerProcess::spawn("moto", cmd)
            .map_err(|e| format!("cannot start moto_server: {e}"))?;
        if !wait_for_port(self.addr(), Duration::from_secs(30)) {
            return Err(format!(
                "moto_server did not listen on {} within 30 s",
                self.addr()
            ));
        }
        self.process = Some(p);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`, the endpoint URL for every SDK client.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// Stops the emulator (to test outages); [`resume`](Self::resume) starts it on the same port.
    /// moto keeps state in memory, so a restart starts empty.
    pub fn stop(&mut self) {
        self.process.take();
    }

    pub fn resume(&mut self) {
        for _ in 0..50 {
            if self.launch().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server could not restart on port {}", self.port);
    }

    /// Clears every service's state (`POST /moto-api/reset`).
    pub async fn reset(&self) {
        let url = format!("{}/moto-api/reset", self.endpoint());
        let ok = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        assert!(ok, "POST {url} failed");
    }

    /// Environment variables that point our binaries (and any SDK) at this emulator, retries off.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_MAX_ATTEMPTS", "1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// An SDK config for this emulator: us-east-1, static `testing` credentials, one attempt per
    /// call (moto answers unimplemented calls with HTML 500s, which the SDK would otherwise retry).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        use aws_sdk_cloudwatch::config::{Credentials, Region};
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .load()
            .await
    }
}
