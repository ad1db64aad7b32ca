//! The release the machine installs: `scripts/release --prebuilt` (the .debs and SHA256SUMS,
//! from the binaries this test build made) when the script exists, otherwise the tarball the
//! older template downloads. Served over HTTPS on the host's loopback with a test CA that the
//! machine trusts, as a real `release_url` is HTTPS.

use super::machine::Machine;
use connscale_test_support::{
    ServerProcess, free_port, wait_for_port, workspace_bin, workspace_root,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A self-signed certificate for 127.0.0.1, trusted inside the machine.
pub struct TestCa {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn make(dir: &Path) -> Self {
        let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=connscale boot test"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (apt-get install -y openssl; scripts/test does)");
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { cert, key }
    }

    /// Adds the certificate to the machine's CA bundle (and its local CA directory, so an
    /// `update-ca-certificates` in the user data keeps it).
    pub fn trust_in(&self, m: &Machine) {
        let pem = std::fs::read_to_string(&self.cert).expect("read test cert");
        m.write(
            "/usr/local/share/ca-certificates/connscale-boot-test.crt",
            &pem,
            0o644,
        );
        let bundle = m.path("/etc/ssl/certs/ca-certificates.crt");
        let mut all = std::fs::read_to_string(&bundle).unwrap_or_default();
        all.push_str(&pem);
        std::fs::write(&bundle, all).expect("extend the machine's CA bundle");
    }
}

/// The packaged release and where the machine downloads it.
pub struct Release {
    /// What the template's `release_url` is.
    pub url: String,
    /// What the template's `release_sha256` is: the hash of SHA256SUMS (or of the tarball).
    pub sha256: String,
    pub kind: &'static str,
    _server: ServerProcess,
}

impl Release {
    pub fn build(work: &Path, tls: &TestCa) -> Self {
        let dist = work.join("dist");
        std::fs::create_dir_all(&dist).expect("create dist");
        let root = workspace_root();
        let (file, kind) = if root.join("scripts/release").is_file() {
            (
                packages(&dist),
                "scripts/release --prebuilt: .debs + SHA256SUMS",
            )
        } else {
            (tarball(&dist), "tarball (no scripts/release yet)")
        };
        let sha256 = sha256(&dist.join(&file));
        let port = free_port();
        let server = serve_https(&dist, port, tls);
        let base = format!("https://127.0.0.1:{port}");
        let url = if file == "SHA256SUMS" {
            format!("{base}/")
        } else {
            format!("{base}/{file}")
        };
        Self {
            url,
            sha256,
            kind,
            _server: server,
        }
    }
}

/// The directory the test's own binaries are in (target/<profile>).
fn profile_dir() -> PathBuf {
    workspace_bin("chat-node")
        .unwrap_or_else(|e| panic!("{e}"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// `scripts/release --prebuilt target/<profile>`: packages the binaries this build made.
fn packages(dist: &Path) -> String {
    let root = workspace_root();
    let out = Command::new(root.join("scripts/release"))
        .arg("--prebuilt")
        .arg(profile_dir())
        .arg("--out")
        .arg(dist)
        .current_dir(&root)
        .output()
        .expect("run scripts/release");
    assert!(
        out.status.success(),
        "scripts/release --prebuilt failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dist.join("SHA256SUMS").is_file(),
        "scripts/release --out {} made no SHA256SUMS",
        dist.display()
    );
    "SHA256SUMS".into()
}

/// The tarball the older template downloads: chat-node, connscale-agent and the agent's unit.
fn tarball(dist: &Path) -> String {
    let stage = dist.join("stage");
    std::fs::create_dir_all(&stage).expect("stage dir");
    for bin in ["chat-node", "connscale-agent", "connscale"] {
        let from = workspace_bin(bin).unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(from, stage.join(bin)).expect("copy binary");
    }
    std::fs::copy(
        workspace_root().join("agent/systemd/connscale-agent.service"),
        stage.join("connscale-agent.service"),
    )
    .expect("copy agent unit");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(dist.join("connscale.tgz"))
        .arg("-C")
        .arg(&stage)
        .args([
            "chat-node",
            "connscale-agent",
            "connscale",
            "connscale-agent.service",
        ])
        .status()
        .expect("run tar");
    assert!(st.success(), "tar failed");
    let _ = std::fs::remove_dir_all(&stage);
    "connscale.tgz".into()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Python's http.server over TLS (a static file server as plain as S3 or a release page).
fn serve_https(dir: &Path, port: u16, tls: &TestCa) -> ServerProcess {
    const SERVER: &str = "import functools, http.server, ssl, sys
d, port, cert, key = sys.argv[1:5]
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=d)
s = http.server.ThreadingHTTPServer(('127.0.0.1', int(port)), h)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SERVER])
        .arg(dir)
        .arg(port.to_string())
        .arg(&tls.cert)
        .arg(&tls.key);
    let p = ServerProcess::spawn("release-https", cmd).expect("start python3 https server");
    assert!(
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10)),
        "the release's HTTPS server did not listen on 127.0.0.1:{port}"
    );
    p
}
