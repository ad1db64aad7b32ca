//! The two one-shot commands a first boot runs: `complete-lifecycle` (ends the launch hook once
//! the services are up, so warm-pool instances finish installing before they are stopped; with
//! `--launched` it records the boot, see [`crate::launch`]) and
//! `fetch-credentials` (SSM SecureString parameters to files that systemd hands to the services
//! as credentials, so no secret is in user data or a world-readable file).

use crate::config::AgentConfig;
use crate::lifecycle::{Hook, LifecycleResult, Retry};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `complete-lifecycle`: completes a lifecycle action of this instance.
#[derive(Debug, Clone, clap::Args)]
pub struct CompleteArgs {
    /// The lifecycle hook's name (the boot script passes `connscale-launch`).
    #[arg(long)]
    pub hook: String,
    /// The action's result.
    #[arg(long, value_enum, ignore_case = true, default_value = "CONTINUE")]
    pub result: LifecycleResult,
    /// Give up after this long (calls fail until the hook is active, and are retried).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub timeout: Duration,
    /// This completes the instance's first launch (the first boot's user data): record this
    /// boot in `launch.marker_file` first, so that the agent completes the launch hook of every
    /// later launch out of the warm pool (cloud-init does not run the user data again).
    #[arg(long)]
    pub launched: bool,
}

/// `fetch-credentials`: SSM parameters to credential files.
#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// NAME=SSM_PARAMETER_NAME: writes the decrypted parameter to DIR/NAME (repeatable).
    #[arg(long = "parameter", value_name = "NAME=SSM_PARAMETER_NAME", value_parser = parse_param, required = true)]
    pub parameters: Vec<Param>,
    /// Directory for the files (created mode 0700; each file 0600).
    #[arg(long, default_value = "/run/connscale/credentials")]
    pub dir: PathBuf,
    /// Give up on transient errors (network, throttling, IAM not yet propagated) after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub timeout: Duration,
}

/// One `--parameter NAME=SSM_PARAMETER_NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The file name under the directory (and the systemd credential's name).
    pub name: String,
    /// The SSM parameter's name or ARN.
    pub parameter: String,
}

/// Parses `NAME=SSM_PARAMETER_NAME`; NAME is a plain file name.
pub fn parse_param(s: &str) -> Result<Param, String> {
    let (name, parameter) = s.split_once('=').ok_or_else(|| {
        format!("{s:?} is not NAME=SSM_PARAMETER_NAME, e.g. api-token=/connscale/api-token")
    })?;
    let ok_name = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok_name {
        return Err(format!(
            "credential name {name:?} must be a plain file name (letters, digits, - _ .), e.g. api-token"
        ));
    }
    if parameter.is_empty() {
        return Err(format!("{s:?} names no SSM parameter after '='"));
    }
    Ok(Param {
        name: name.to_string(),
        parameter: parameter.to_string(),
    })
}

/// Completes the lifecycle action, retrying with backoff (identity and the call) until it
/// succeeds or `args.timeout` passes.
pub async fn complete_lifecycle(cfg: &AgentConfig, args: &CompleteArgs) -> Result<(), String> {
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let hook = loop {
        match Hook::connect(cfg, &args.hook).await {
            Ok(h) => break h,
            Err(e) if started.elapsed() + backoff < args.timeout => {
                tracing::warn!(error = %e, "identity not known yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    };
    if args.launched && args.result == LifecycleResult::Continue {
        crate::launch::record(&cfg.launch.marker_file)?;
    }
    let left = args.timeout.saturating_sub(started.elapsed());
    let mut retry = Retry::new(left, Duration::from_secs(30));
    hook.complete_until(args.result, &mut retry)
        .await
        .map_err(|e| {
            format!(
                "lifecycle hook {} not completed within {:?}: {e}",
                args.hook, args.timeout
            )
        })?;
    tracing::info!(hook = %args.hook, result = args.result.as_str(), instance = %hook.instance, group = %hook.group, "lifecycle action completed");
    Ok(())
}

/// Reads each parameter with GetParameter(WithDecryption) and writes it to `dir/NAME`. Values are
/// never printed.
pub async fn fetch_credentials(cfg: &AgentConfig, args: &FetchArgs) -> Result<(), String> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = crate::resolve_region(cfg).await {
        loader = loader.region(aws_config::Region::new(r));
    }
    let ssm = aws_sdk_ssm::Client::new(&loader.load().await);
    make_private_dir(&args.dir)?;
    let started = Instant::now();
    for p in &args.parameters {
        let value = get_parameter(&ssm, p, started, args.timeout).await?;
        write_private(&args.dir, &p.name, value.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", args.dir.join(&p.name).display()))?;
        tracing::info!(credential = %p.name, parameter = %p.parameter, dir = %args.dir.display(), "credential written");
    }
    Ok(())
}

/// One decrypted parameter value; not-found and key errors fail at once, others are retried.
async fn get_parameter(
    ssm: &aws_sdk_ssm::Client,
    p: &Param,
    started: Instant,
    timeout: Duration,
) -> Result<String, String> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let r = ssm
            .get_parameter()
            .name(&p.parameter)
            .with_decryption(true)
            .send()
            .await;
        let e = match r {
            Ok(out) => {
                return out
                    .parameter()
                    .and_then(|x| x.value())
                    .map(str::to_string)
                    .ok_or_else(|| format!("SSM parameter {} has no value", p.parameter));
            }
            Err(e) => e,
        };
        let permanent = e.as_service_error().is_some_and(|s| {
            s.is_parameter_not_found()
                || s.is_parameter_version_not_found()
                || s.is_invalid_key_id()
        });
        let msg = format!(
            "GetParameter {} (needs ssm:GetParameter on it and kms:Decrypt on its key): {}",
            p.parameter,
            aws_sdk_ssm::error::DisplayErrorContext(e)
        );
        if permanent || started.elapsed() + backoff >= timeout {
            return Err(msg);
        }
        tracing::warn!(error = %msg, retry_in = ?backoff, "retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Creates `dir` (and parents) and makes it 0700 even if it existed.
fn make_private_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot create {} (mode 0700): {e}", dir.display()))
}

/// Writes `dir/name` with mode 0600 atomically: a temporary file in `dir`, synced, renamed.
fn write_private(dir: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f.write_all(value).and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, dir.join(name))) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_param("api-token=/connscale/prod/api-token"),
            Ok(Param {
                name: "api-token".into(),
                parameter: "/connscale/prod/api-token".into()
            })
        );
        for bad in ["api-token", "../x=/p", "a/b=/p", "=/p", ".hidden=/p", "x="] {
            assert!(parse_param(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_private_and_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("creds");
        make_private_dir(&dir).unwrap();
        write_private(&dir, "t", b"one").unwrap();
        write_private(&dir, "t", b"two").unwrap();
        assert_eq!(std::fs::read(dir.join("t")).unwrap(), b"two");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("t")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
