//! `connscale-docgen OUT_DIR`: writes man pages (`OUT_DIR/CMD/man/*.1`) and shell completions
//! (`OUT_DIR/CMD/completions/{bash,zsh,fish}/…`) for the three packaged commands (connscale,
//! chat-node, connscale-agent), from their clap definitions in each crate's library: one
//! directory per command, so each package takes its own with a glob. scripts/release runs it and
//! packages what it writes.

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connscale-docgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command line: the output directory.
struct Args {
    out: PathBuf,
}

fn parse(args: Vec<String>) -> Result<Args, String> {
    const USAGE: &str = "usage: connscale-docgen OUT_DIR";
    let mut out = None;
    for a in args {
        match a.as_str() {
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown flag {s:?}; {USAGE}")),
            _ if out.is_some() => return Err(format!("one output directory only; {USAGE}")),
            _ => out = Some(PathBuf::from(a)),
        }
    }
    Ok(Args {
        out: out.ok_or(USAGE)?,
    })
}

fn run(args: Vec<String>) -> Result<(), String> {
    let args = parse(args)?;
    for cmd in [
        connscale::cli::Cli::command(),
        chat_node::cli::Cli::command(),
        connscale_agent::cli::Cli::command(),
    ] {
        let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
        let out = args.out.join(cmd.get_name());
        write_man_tree(&cmd, &mkdir(out.join("man"))?)?;
        write_completions(cmd, &out)?;
    }
    Ok(())
}

fn mkdir(dir: PathBuf) -> Result<PathBuf, String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `NAME.1` for the command and `NAME-SUB.1` for each subcommand (as git and cargo ship them).
fn write_man_tree(cmd: &clap::Command, dir: &Path) -> Result<(), String> {
    let name = cmd.get_name().to_string();
    write_man(cmd, dir, &name)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(full.clone())
            .bin_name(format!("{name} {}", sub.get_name()))
            .version(cmd.get_version().unwrap_or("").to_string());
        write_man(&sub, dir, &full)?;
    }
    Ok(())
}

fn write_man(cmd: &clap::Command, dir: &Path, file: &str) -> Result<(), String> {
    let path = dir.join(format!("{file}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut buf)
        .map_err(|e| format!("cannot render {file}.1: {e}"))?;
    std::fs::write(&path, buf).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Completions where each shell looks for them: bash-completion's, zsh's and fish's directories
/// under `out/completions/` (the packages install them under /usr/share).
fn write_completions(mut cmd: clap::Command, out: &Path) -> Result<(), String> {
    let name = cmd.get_name().to_string();
    for (shell, sub, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let dir = out.join("completions").join(sub);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut buf);
        let path = dir.join(file);
        std::fs::write(&path, buf).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pages_and_completions_for_every_command() {
        let dir = std::env::temp_dir().join(format!("docgen-{}", std::process::id()));
        run(vec![dir.display().to_string()]).expect("docgen runs");
        for f in [
            "connscale/man/connscale.1",
            "connscale/man/connscale-run.1",
            "chat-node/man/chat-node.1",
            "connscale/completions/bash/connscale",
            "chat-node/completions/zsh/_chat-node",
            "connscale/completions/fish/connscale.fish",
            "connscale-agent/man/connscale-agent.1",
            "connscale-agent/man/connscale-agent-fetch-credentials.1",
            "connscale-agent/man/connscale-agent-complete-lifecycle.1",
            "connscale-agent/completions/bash/connscale-agent",
            "connscale-agent/completions/zsh/_connscale-agent",
            "connscale-agent/completions/fish/connscale-agent.fish",
        ] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            assert!(!text.is_empty(), "{f} missing or empty");
        }
        let run_page =
            std::fs::read_to_string(dir.join("connscale/man/connscale-run.1")).unwrap_or_default();
        assert!(run_page.contains("lease"), "run's page has its long help");
        // The agent's page and completions come from its clap definition: its flags and
        // subcommands, not a copy of --help.
        let agent_page = std::fs::read_to_string(dir.join("connscale-agent/man/connscale-agent.1"))
            .unwrap_or_default();
        assert!(
            agent_page.contains("SOCK_DIAG")
                && agent_page.contains("connscale\\-agent\\-fetch\\-credentials(1)"),
            "the agent's page has its long help and its subcommands"
        );
        let agent_bash =
            std::fs::read_to_string(dir.join("connscale-agent/completions/bash/connscale-agent"))
                .unwrap_or_default();
        for word in [
            "--port",
            "--netns",
            "fetch-credentials",
            "complete-lifecycle",
        ] {
            assert!(agent_bash.contains(word), "bash completion offers {word}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_arguments_say_the_usage() {
        assert!(parse(vec![]).err().unwrap_or_default().contains("usage"));
        let e = parse(vec!["--bogus".into()]).err().unwrap_or_default();
        assert!(e.contains("--bogus") && e.contains("usage"), "{e}");
    }
}
