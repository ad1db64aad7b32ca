//! Process limits that bound how many connections one process can hold.

/// The process's soft and hard RLIMIT_NOFILE.
pub fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; it cannot fail for RLIMIT_NOFILE.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return (1024, 1024);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Raises the soft open-file limit to the hard limit (allowed without privileges) and returns it.
pub fn raise_nofile() -> u64 {
    let (soft, hard) = nofile();
    if soft < hard {
        let lim = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            return hard;
        }
    }
    soft
}

/// Files a process needs besides its client sockets: listeners, Redis, logs, the runtime.
pub const FD_RESERVE: u64 = 64;

/// A warning to log when a configured connection cap cannot be reached under the open-file limit.
/// `None` when the cap fits.
pub fn cap_warning(what: &str, cap: u64, nofile: u64) -> Option<String> {
    (cap + FD_RESERVE > nofile).then(|| {
        format!(
            "{what} connection cap {cap} exceeds this process's open-file limit {nofile} \
             (minus {FD_RESERVE} reserved): connections will fail with EMFILE before the cap; \
             raise LimitNOFILE= in the systemd unit or lower the cap"
        )
    })
}

/// Makes the kernel kill the child (SIGKILL) when the thread that spawns it dies, so children
/// never outlive a crashed or interrupted parent. Spawn from the main thread: the signal
/// follows the forking thread, not the process.
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_when_cap_does_not_fit() {
        assert!(cap_warning("chat-node", 28_000, 20_000).is_some());
        assert!(cap_warning("chat-node", 10_000, 20_000).is_none());
        let w = cap_warning("agent", 19_990, 20_000).unwrap_or_default();
        assert!(w.contains("19990") && w.contains("20000"), "{w}");
    }

    #[test]
    fn raise_never_lowers() {
        let (soft, _) = nofile();
        assert!(raise_nofile() >= soft);
    }
}
