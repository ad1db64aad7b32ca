//! The official socket.io-client (npm), remote-controlled over JSON lines by
//! chat-node/tests/js/driver.js: chat-node's own tests and the boot test drive it the same way.

use crate::{find_tool, workspace_root};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The official socket.io-client, driven over JSON lines.
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
}

impl Driver {
    pub fn start() -> Self {
        let node = find_tool(
            "node",
            &[],
            "apt-get install -y nodejs npm (scripts/test does)",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let root = workspace_root();
        assert!(
            root.join("node_modules/socket.io-client").is_dir(),
            "socket.io-client missing in {}: run `npm ci` (scripts/test does)",
            root.join("node_modules").display()
        );
        let mut child = Command::new(node)
            .arg(root.join("chat-node/tests/js/driver.js"))
            .env("NODE_PATH", root.join("node_modules"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node driver");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let mut d = Self {
            child,
            stdin,
            events: rx,
            seen: Vec::new(),
        };
        d.expect(10, "driver ready", |e| e["ev"] == "ready");
        d
    }

    pub fn send(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").expect("write to driver");
    }

    pub fn connect(&mut self, id: &str, url: &str, opts: Value) -> Value {
        self.send(json!({"op": "connect", "id": id, "url": url, "opts": opts}));
        self.expect(10, &format!("{id} connects"), |e| {
            e["ev"] == "connect" && e["id"] == id
        })
    }

    pub fn emit(&mut self, id: &str, event: &str, args: Value) {
        self.send(json!({"op": "emit", "id": id, "event": event, "args": args}));
    }

    pub fn emit_ack(&mut self, id: &str, event: &str, args: Value) -> Value {
        let tag = format!("t{}-{}", id, self.seen.len());
        self.send(json!({"op": "emit", "id": id, "event": event, "args": args, "tag": tag}));
        self.expect(10, &format!("ack {tag}"), |e| {
            e["ev"] == "ack" && e["tag"] == tag.as_str()
        })["args"]
            .clone()
    }

    /// Waits for the first event (seen or new) matching `pred`; consumes it.
    pub fn expect(&mut self, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if pred(&e) => return e,
                Ok(e) => self.seen.push(e),
                Err(_) => panic!(
                    "timed out waiting for {what}; seen: {:#?}",
                    self.seen.iter().rev().take(12).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Collects events for `ms` milliseconds.
    pub fn drain_events(&mut self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while let Ok(e) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(e);
        }
    }

    pub fn events_named(&self, id: &str, name: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|e| e["ev"] == "event" && e["id"] == id && e["name"] == name)
            .cloned()
            .collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
