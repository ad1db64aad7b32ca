//! A Debian 12 machine booted under systemd-nspawn from a copy of the cached root file system.
//!
//! The container shares the host's network (its services listen on the host's loopback) and is
//! not registered with machined (the host has no system bus), so the test reaches inside with
//! `nsenter` into its PID 1's namespaces. Dropping a [`Machine`] powers it off (SIGTERM to
//! nspawn), kills it if that takes too long, and removes the copy: a failing test leaves nothing.

use connscale_test_support::{ServerProcess, pid_alive, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The root file system `scripts/test` makes once (target/boot-rootfs/current names it).
pub fn cached_rootfs() -> PathBuf {
    let base = workspace_root().join("target/boot-rootfs");
    let name = std::fs::read_to_string(base.join("current")).unwrap_or_default();
    let dir = base.join(name.trim());
    assert!(
        !name.trim().is_empty() && dir.join("lib/systemd/systemd").is_file(),
        "no Debian 12 root file system in {}: scripts/test makes it (debootstrap, once, as root)",
        base.display()
    );
    dir
}

/// A copy of the root file system, prepared and then booted.
pub struct Machine {
    pub root: PathBuf,
    /// The machine's name: its directory's and its hostname (nspawn's default).
    pub name: String,
    nspawn: Option<ServerProcess>,
    init_pid: Option<u32>,
    /// SIGTERM already sent to nspawn (a power-off under way).
    stopping: bool,
}

impl Machine {
    /// Copies `rootfs` to a fresh directory target/boot-runs/NAME-PID (removed on drop); the
    /// machine's hostname is that directory's name.
    pub fn copy_of(rootfs: &Path, name: &str) -> Self {
        let runs = workspace_root().join("target/boot-runs");
        std::fs::create_dir_all(&runs).expect("create target/boot-runs");
        let name = format!("{name}-{}", std::process::id());
        let root = runs.join(&name);
        let _ = std::fs::remove_dir_all(&root);
        let st = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(rootfs)
            .arg(&root)
            .status()
            .expect("run cp");
        assert!(
            st.success(),
            "cp -a {} {} failed",
            rootfs.display(),
            root.display()
        );
        let m = Self {
            root,
            name,
            nspawn: None,
            init_pid: None,
            stopping: false,
        };
        // Each machine its own hostname, as each instance has (debootstrap copied the host's).
        m.write("/etc/hostname", &format!("{}\n", m.name), 0o644);
        m
    }

    /// Path of `p` (absolute inside the machine) on the host.
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Writes a file inside the machine (before or after boot), creating its directory.
    pub fn write(&self, p: &str, contents: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(p);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).expect("create dir in machine");
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {p}: {e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Enables `unit` (already written under /etc/systemd/system) for multi-user.target.
    pub fn enable(&self, unit: &str) {
        let wants = self.path("/etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).expect("create wants dir");
        let link = wants.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), link).expect("symlink");
    }

    /// Boots the machine; returns once its systemd (PID 1) runs.
    pub fn boot(&mut self) {
        let nspawn = connscale_test_support::find_tool(
            "systemd-nspawn",
            &[],
            "apt-get install -y systemd-container (scripts/test does)",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(nspawn);
        cmd.args(["-q", "-D"]).arg(&self.root).args([
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            // EC2 gives root every capability; nspawn keeps CAP_NET_ADMIN out of a container
            // that shares the host's network, and the agent's close-drain drop-in needs it.
            "--capability=CAP_NET_ADMIN",
            "-b",
        ]);
        // ServerProcess sets PDEATHSIG and keeps the console in its log file.
        let p = ServerProcess::spawn(&self.log_name(), cmd).expect("start systemd-nspawn");
        let nspawn_pid = p.pid();
        self.nspawn = Some(p);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(pid) = container_init(nspawn_pid) {
                self.init_pid = Some(pid);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the machine's systemd did not start within 30 s; console: {}",
            self.console()
        );
    }

    /// ServerProcess's name for this machine's nspawn (its console log is named after it).
    fn log_name(&self) -> String {
        format!("nspawn-{}", self.name)
    }

    /// The console output so far (nspawn's log).
    pub fn console(&self) -> String {
        let log = std::env::temp_dir().join(format!(
            "connscale-test-{}-{}.log",
            self.log_name(),
            std::process::id()
        ));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Runs a command inside the booted machine as root, in all its namespaces.
    pub fn exec(&self, args: &[&str]) -> Output {
        let pid = self.init_pid.expect("machine not booted");
        Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-m",
                "-u",
                "-i",
                "-p",
                "-r",
                "-w",
                "--",
            ])
            .args([
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "SYSTEMD_COLORS=0",
                "SYSTEMD_PAGER=",
            ])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("nsenter {args:?}: {e}"))
    }

    /// [`exec`](Self::exec), stdout as text; panics with stderr when the command fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "`{script}` failed in the machine ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the boot is finished (`running` or `degraded`); returns that state.
    pub fn wait_booted(&self, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let limit = secs.to_string();
        loop {
            let out = self.exec(&[
                "timeout",
                &limit,
                "systemctl",
                "is-system-running",
                "--wait",
            ]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            // Before PID 1 listens, systemctl fails to connect: retry.
            if state == "running" || state == "degraded" || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A unit's ActiveState (`active`, `failed`, `inactive`, ...).
    pub fn unit_state(&self, unit: &str) -> String {
        let out = self.exec(&["systemctl", "show", "-P", "ActiveState", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The last lines of a unit's journal, for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&[
            "journalctl",
            "--no-pager",
            "-n",
            "60",
            "-o",
            "cat",
            "-u",
            unit,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a clean power-off without waiting for it ([`poweroff`](Self::poweroff) waits).
    pub fn begin_poweroff(&mut self) {
        if let Some(p) = self.nspawn.as_ref().filter(|_| !self.stopping) {
            // nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd: a clean poweroff.
            p.signal(libc::SIGTERM);
            self.stopping = true;
        }
    }

    /// Powers the machine off and waits for it (kills it after `grace`).
    pub fn poweroff(&mut self, grace: Duration) {
        self.begin_poweroff();
        let Some(mut p) = self.nspawn.take() else {
            return;
        };
        if p.wait_exit(grace).is_none() {
            if let Some(pid) = self.init_pid.filter(|p| pid_alive(*p)) {
                // PID 1 of the container's PID namespace: the kernel kills everything in it.
                // SAFETY: kill(2) on the container's init, which this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            p.stop();
        }
        self.init_pid = None;
        // Off: it may boot again (a stopped warm-pool instance started).
        self.stopping = false;
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.poweroff(Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The container's PID 1 as seen from the host: a descendant of nspawn whose PID in its own
/// namespace is 1.
fn container_init(nspawn: u32) -> Option<u32> {
    let mut queue = vec![nspawn];
    while let Some(pid) = queue.pop() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default();
        if pid != nspawn && nspid.len() > 1 && nspid.last() == Some(&"1") {
            return Some(pid);
        }
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            queue.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    None
}
