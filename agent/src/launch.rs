//! Launches after the first boot. An instance leaving the warm pool pauses in `Pending:Wait` on
//! the launch hook again, but cloud-init runs the user data (whose `complete-lifecycle
//! --launched` completes the first launch) only on the first boot: a stopped pool instance boots
//! again without it, a running or hibernated one just resumes. Nothing else would complete the
//! hook, and AWS would ABANDON (terminate) every instance the pool hands out.
//!
//! So the first boot records its boot id ([`record`]) before it completes the hook, and the
//! agent completes the hook itself, once the service listens, when it reads an `InService` target
//! either right after a `Warmed:*` one (the instance left the pool while the agent ran) or at
//! its start on a later boot than the recorded one (a stopped instance booted again). A restart
//! of the agent during the same boot owes nothing.

use crate::config::AgentConfig;
use crate::lifecycle::{Hook, LifecycleResult, Retry};
use crate::{Shared, lock};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The kernel's id of this boot (a container under systemd-nspawn gets its own).
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// How the agent came to read an `InService` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first target this agent process read.
    AgentStart,
    /// The target before it was `Warmed:*`: the instance left the warm pool.
    LeftPool,
    /// Anything else (it was in service already, or back from a drain that did not finish).
    Other,
}

impl Arrival {
    /// Classifies an `InService` target by the raw target read before it (`None`: none yet).
    pub fn after(previous: Option<&str>) -> Self {
        match previous.map(str::trim) {
            None => Self::AgentStart,
            Some(p) if p.starts_with("Warmed:") => Self::LeftPool,
            Some(_) => Self::Other,
        }
    }
}

/// Whether this launch's hook is the agent's to complete. `recorded` is the boot id the first
/// boot (or the agent, since) recorded; none means the first boot's user data has not finished,
/// and completing the hook is its job.
pub fn owed(arrival: Arrival, recorded: Option<&str>, boot: &str) -> bool {
    match arrival {
        Arrival::LeftPool => true,
        Arrival::AgentStart => recorded.is_some_and(|r| r.trim() != boot.trim()),
        Arrival::Other => false,
    }
}

/// This boot's id, or an error that says which file could not be read.
pub fn boot_id() -> Result<String, String> {
    std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {BOOT_ID}: {e}"))
}

/// The recorded boot id; `None` when the file does not exist.
pub fn recorded(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Records this boot as launched, durably (written beside, synced, then renamed): a pool
/// instance is stopped right after its launch hook completes, so the record comes first.
pub fn record(path: &Path) -> Result<(), String> {
    let boot = boot_id()?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let fail = |e: std::io::Error| format!("cannot record the launch in {}: {e}", path.display());
    if let Some(d) = dir {
        std::fs::create_dir_all(d).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(format!("{boot}\n").as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(d) = dir {
        std::fs::File::open(d)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
    }
    Ok(())
}

/// Called on every `InService` target the watcher reads after another (or first): completes
/// the launch hook in the background when it is owed. Returns whether it started.
pub fn on_in_service(cfg: &AgentConfig, status: &Shared, arrival: Arrival) -> bool {
    let Some(hook) = cfg.launch.hook_name.clone() else {
        return false;
    };
    let decided = boot_id().and_then(|boot| {
        let rec = recorded(&cfg.launch.marker_file)?;
        Ok(owed(arrival, rec.as_deref(), &boot))
    });
    match decided {
        Ok(false) => false,
        Ok(true) => {
            tracing::info!(hook = %hook, ?arrival, "a launch after the first boot (out of the warm pool): completing the launch hook once the service listens");
            let (cfg, status) = (cfg.clone(), status.clone());
            tokio::spawn(async move { complete(&cfg, &status, &hook).await });
            true
        }
        Err(e) => {
            tracing::error!(error = %e, hook = %hook, "cannot tell whether this launch's hook is the agent's to complete; leaving it (AWS applies its default result)");
            false
        }
    }
}

/// Waits (within `launch.timeout`) for the service to listen, completes the hook with CONTINUE,
/// and records the boot. Past the timeout AWS applies the hook's default result (ABANDON: the
/// instance is replaced), which is right for a service that never came up.
async fn complete(cfg: &AgentConfig, status: &Shared, name: &str) {
    let deadline = Instant::now() + cfg.launch.timeout;
    while !lock(status).listening {
        if Instant::now() >= deadline {
            tracing::error!(hook = %name, ports = ?cfg.ports, timeout = ?cfg.launch.timeout, "the service never listened: launch hook left to its default result");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let hook = match Hook::connect(cfg, name).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot complete the launch hook");
            return;
        }
    };
    let mut retry = Retry::new(
        deadline.saturating_duration_since(Instant::now()),
        Duration::from_secs(30),
    );
    match hook
        .complete_until(LifecycleResult::Continue, &mut retry)
        .await
    {
        Ok(()) => {
            tracing::info!(hook = %name, instance = %hook.instance, group = %hook.group, "launch hook completed: the instance goes in service");
            if let Err(e) = record(&cfg.launch.marker_file) {
                tracing::warn!(error = %e, "launch completed but not recorded: a restart of the agent in this boot will try again and fail harmlessly");
            }
        }
        Err(e) => tracing::error!(error = %e, hook = %name, "launch hook not completed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_told_apart_by_the_previous_target() {
        assert_eq!(Arrival::after(None), Arrival::AgentStart);
        for p in [
            "Warmed:Running",
            "Warmed:Hibernated",
            "Warmed:Stopped",
            " Warmed:Pending:Wait\n",
        ] {
            assert_eq!(Arrival::after(Some(p)), Arrival::LeftPool, "{p:?}");
        }
        for p in ["InService", "Terminated", "Pending", "Standby", ""] {
            assert_eq!(Arrival::after(Some(p)), Arrival::Other, "{p:?}");
        }
    }

    #[test]
    fn only_launches_after_the_recorded_boot_are_owed() {
        use Arrival::*;
        let cases: &[(Arrival, Option<&str>, bool)] = &[
            // First boot, before its user data finished: the user data completes the hook.
            (AgentStart, None, false),
            // The agent restarted during the boot that launched: nothing is waiting.
            (AgentStart, Some("b1"), false),
            (AgentStart, Some(" b1\n"), false),
            // A stopped pool instance booted again.
            (AgentStart, Some("b0"), true),
            // A running or hibernated pool instance resumed, in any boot.
            (LeftPool, Some("b1"), true),
            (LeftPool, None, true),
            (Other, Some("b0"), false),
        ];
        for (arrival, rec, want) in cases {
            assert_eq!(owed(*arrival, *rec, "b1"), *want, "{arrival:?} {rec:?}");
        }
    }

    #[test]
    fn a_record_holds_this_boots_id_and_replaces_the_last() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state/launched");
        assert_eq!(recorded(&path), Ok(None));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, "another-boot\n").expect("write");
        record(&path).expect("record");
        assert_eq!(recorded(&path), Ok(Some(boot_id().expect("boot id"))));
        assert!(!path.with_extension("tmp").exists());
    }
}
