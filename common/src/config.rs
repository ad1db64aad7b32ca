//! Loading a part's TOML config file with environment overrides, with errors that name the file,
//! the line and the key (or the environment variable) at fault.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// One environment variable that overrides one dotted key of the config file.
#[derive(Debug, Clone, Copy)]
pub struct EnvOverride {
    pub var: &'static str,
    pub key: &'static str,
}

/// Why a config could not be loaded; each variant says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {source} (pass --config PATH, or omit it to use defaults)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value in environment variable {var} (overrides key `{key}`): {message}")]
    Env {
        var: &'static str,
        key: &'static str,
        message: String,
    },
}

/// Reads `path` (or `default_path` when `path` is `None`; a missing default file means "all
/// defaults"), then applies each override whose variable is set. `T` must default every field, so
/// that the file alone always deserializes and any later error is the environment's.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    default_path: &str,
    overrides: &[EnvOverride],
) -> Result<T, ConfigError> {
    let (file, text) = match path {
        Some(p) => (
            p.to_path_buf(),
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
        ),
        None => {
            let p = PathBuf::from(default_path);
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            (p, text)
        }
    };
    load_str(&text, &file, overrides, |var| std::env::var(var).ok())
}

/// [`load`] on text already read, with an injectable environment (for tests).
pub fn load_str<T: DeserializeOwned>(
    text: &str,
    file: &Path,
    overrides: &[EnvOverride],
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let parse_err = |e: toml::de::Error| ConfigError::Parse {
        path: file.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    };
    let from_file: T = toml::from_str(text).map_err(parse_err)?;
    let set: Vec<(EnvOverride, String)> = overrides
        .iter()
        .filter_map(|o| env(o.var).map(|v| (*o, v)))
        .collect();
    if set.is_empty() {
        return Ok(from_file);
    }
    let mut table: toml::Table = toml::from_str(text).map_err(parse_err)?;
    for (o, raw) in &set {
        insert_dotted(&mut table, o.key, env_value(raw));
    }
    let merged = toml::Value::Table(table);
    merged.try_into().map_err(|e: toml::de::Error| {
        let msg = e.to_string();
        // Blame the variable whose key the message names, else the first one set.
        let (o, _) = set
            .iter()
            .find(|(o, _)| msg.contains(o.key.rsplit('.').next().unwrap_or(o.key)))
            .unwrap_or(&set[0]);
        ConfigError::Env {
            var: o.var,
            key: o.key,
            message: msg.trim_end().to_string(),
        }
    })
}

/// An environment string as a TOML value: numbers, booleans and arrays parse as such, anything
/// else is a string (so `REDIS_URL=redis://x` needs no quoting).
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| raw.into()),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn insert_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts = key.split('.').peekable();
    let mut cur = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), value);
            return;
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => cur = t,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Cfg {
        port: u16,
        redis_url: Option<String>,
        drain: Drain,
    }
    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Drain {
        window_secs: u64,
    }

    const OV: &[EnvOverride] = &[
        EnvOverride {
            var: "PORT",
            key: "port",
        },
        EnvOverride {
            var: "REDIS_URL",
            key: "redis_url",
        },
        EnvOverride {
            var: "DRAIN",
            key: "drain.window_secs",
        },
    ];

    fn load_with(text: &str, env: &[(&str, &str)]) -> Result<Cfg, ConfigError> {
        load_str(text, Path::new("x.toml"), OV, |v| {
            env.iter()
                .find(|(k, _)| *k == v)
                .map(|(_, val)| val.to_string())
        })
    }

    #[test]
    fn env_overrides_file() {
        let c = load_with(
            "port = 1\n[drain]\nwindow_secs = 5\n",
            &[("PORT", "9"), ("REDIS_URL", "redis://h:1"), ("DRAIN", "7")],
        )
        .expect("loads");
        assert_eq!(c.port, 9);
        assert_eq!(c.redis_url.as_deref(), Some("redis://h:1"));
        assert_eq!(c.drain.window_secs, 7);
    }

    #[test]
    fn file_errors_name_line_and_key() {
        let e = load_with("port = 1\nprot = 2\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.toml") && e.contains("line 2") && e.contains("prot"),
            "{e}"
        );
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = load_with("", &[("PORT", "eighty")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("PORT") && e.contains("`port`"), "{e}");
    }
}
