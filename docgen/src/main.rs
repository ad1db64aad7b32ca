//! `connscale-docgen OUT_DIR [--agent-bin PATH]`: writes man pages (`OUT_DIR/CMD/man/*.1`) and
//! shell completions (`OUT_DIR/CMD/completions/{bash,zsh,fish}/…`) for the three packaged
//! commands, from their clap definitions: one directory per command, so each package takes its
//! own with a glob. scripts/release runs it and packages what it writes.
//!
//! connscale-agent's `Cli` lives in its binary (agent/src/main.rs), not its library, so it cannot
//! be imported here. Until it moves to the library, its man page is made from the binary's own
//! `--help` (still rendered by clap_mangen) and it gets no completions.

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

/// The command line: an output directory, and optionally the agent binary to read `--help` from.
struct Args {
    out: PathBuf,
    agent_bin: Option<PathBuf>,
}

fn parse(args: Vec<String>) -> Result<Args, String> {
    const USAGE: &str = "usage: connscale-docgen OUT_DIR [--agent-bin PATH]";
    let mut out = None;
    let mut agent_bin = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--agent-bin" => {
                agent_bin = Some(PathBuf::from(
                    it.next()
                        .ok_or(format!("--agent-bin needs a path; {USAGE}"))?,
                ))
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown flag {s:?}; {USAGE}")),
            _ if out.is_some() => return Err(format!("one output directory only; {USAGE}")),
            _ => out = Some(PathBuf::from(a)),
        }
    }
    Ok(Args {
        out: out.ok_or(USAGE)?,
        agent_bin,
    })
}

fn run(args: Vec<String>) -> Result<(), String> {
    let args = parse(args)?;
    for cmd in [
        connscale::cli::Cli::command(),
        chat_node::cli::Cli::command(),
    ] {
        let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
        let out = args.out.join(cmd.get_name());
        write_man_tree(&cmd, &mkdir(out.join("man"))?)?;
        write_completions(cmd, &out)?;
    }
    if let Some(bin) = &args.agent_bin {
        let man = mkdir(args.out.join("connscale-agent").join("man"))?;
        write_man(&agent_from_help(bin)?, &man, "connscale-agent")?;
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

/// The agent's command as its binary describes itself: the first paragraph of `--help` is the
/// summary, the rest (options included) the description.
fn agent_from_help(bin: &Path) -> Result<clap::Command, String> {
    let run = |flag: &str| -> Result<String, String> {
        let out = std::process::Command::new(bin)
            .arg(flag)
            .output()
            .map_err(|e| format!("cannot run {} {flag}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!("{} {flag} failed: {}", bin.display(), out.status));
        }
        String::from_utf8(out.stdout).map_err(|_| format!("{} {flag}: not UTF-8", bin.display()))
    };
    let help = run("--help")?;
    let version = run("--version")?;
    let version = version.split_whitespace().nth(1).unwrap_or("").to_string();
    let (about, rest) = help.split_once("\n\n").unwrap_or((help.as_str(), ""));
    let about = about.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok(clap::Command::new("connscale-agent")
        .version(version)
        .about(about.clone())
        .long_about(format!("{about}\n\n{}", rest.trim())))
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
        ] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            assert!(!text.is_empty(), "{f} missing or empty");
        }
        let run_page =
            std::fs::read_to_string(dir.join("connscale/man/connscale-run.1")).unwrap_or_default();
        assert!(run_page.contains("lease"), "run's page has its long help");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_arguments_say_the_usage() {
        assert!(parse(vec![]).err().unwrap_or_default().contains("usage"));
        let e = parse(vec!["--bogus".into()]).err().unwrap_or_default();
        assert!(e.contains("--bogus") && e.contains("usage"), "{e}");
    }
}
