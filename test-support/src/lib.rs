//! Real servers for tests, on free loopback ports, always stopped.
//!
//! Every server is a child process wrapped in [`ServerProcess`], which kills it on drop (so a
//! panicking test still cleans up) and asks the kernel to kill it if the test process dies first
//! (`PR_SET_PDEATHSIG`). A missing binary is a [`MissingTool`] naming the install command.

mod instance;
mod moto;
mod process;
mod redis_cluster;
mod redis_server;
mod sio_driver;

pub use instance::{InstanceIdentity, InstanceStub, LifecycleAction, LifecycleCall};
pub use moto::MotoServer;
pub use process::{MissingTool, ServerProcess, find_tool, free_port, pid_alive, wait_for_port};
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;
pub use sio_driver::Driver;

use std::path::PathBuf;

/// The workspace root (where `Cargo.toml`, `scripts/` and `target/` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of one of this workspace's binaries, built in the same profile as the running test.
/// `cargo test --workspace` / `cargo nextest run --workspace` build every binary first.
pub fn workspace_bin(name: &str) -> Result<PathBuf, MissingTool> {
    let exe =
        std::env::current_exe().map_err(|_| MissingTool::new(name, "cargo build --workspace"))?;
    // target/<profile>/deps/test-xxxx → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .map(PathBuf::from)
        .unwrap_or_default();
    // With a build directory apart from the target directory (cargo's `build.build-dir`), tests
    // run from the build directory while binaries land in the target directory: look there first.
    if let (Ok(target), Some(profile)) =
        (std::env::var("CARGO_TARGET_DIR"), profile_dir.file_name())
    {
        let path = PathBuf::from(target).join(profile).join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    let path = profile_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(MissingTool::new(name, "cargo build --workspace --bins"))
    }
}
