//! The user data, rendered from the real templates with the variables terraform passes (fleet.tf's
//! for the chat nodes, controller.tf's for the controller).
//!
//! Terraform's own `templatefile()` (in `terraform console`, which needs no provider) renders it
//! when a terraform binary exists. Without one, a renderer for the subset the template uses
//! (`${name}`, `${name + N}`, `${name - N}`, `$${`) does, and refuses anything else by name.

use serde_json::{Map, Value};
use std::path::Path;
use std::process::Command;

/// The keys of the variables map in a `.tf` file's `templatefile(".../TEMPLATE", { ... })`
/// (`template` as it is named there, e.g. `templates/user_data.sh.tftpl`).
pub fn template_keys(tf: &str, template: &str) -> Vec<String> {
    let start = tf
        .find(&format!("/{template}\""))
        .unwrap_or_else(|| panic!("the .tf file renders no {template}"));
    let rest = &tf[start..];
    let open = rest.find('{').expect("templatefile's variables map");
    let mut depth = 0usize;
    let mut end = rest.len();
    for (i, c) in rest[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = open + i;
                    break;
                }
            }
            _ => {}
        }
    }
    // Top-level `key = value` lines of the map (nested maps' keys are deeper).
    let mut keys = Vec::new();
    let mut depth = 0i32;
    for line in rest[open + 1..end].lines() {
        let t = line.trim();
        if depth == 0
            && let Some((k, _)) = t.split_once('=')
        {
            let k = k.trim();
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                keys.push(k.to_string());
            }
        }
        depth += t.matches(['{', '(', '[']).count() as i32;
        depth -= t.matches(['}', ')', ']']).count() as i32;
    }
    keys
}

/// Renders `template` with `vars`: terraform if it runs here, else the subset renderer.
pub fn render(template: &Path, vars: &Map<String, Value>) -> (String, &'static str) {
    match terraform_render(template, vars) {
        Some(s) => (s, "terraform templatefile()"),
        None => {
            let text = std::fs::read_to_string(template).expect("read template");
            match subset_render(&text, vars) {
                Ok(s) => (s, "subset renderer (no terraform binary)"),
                Err(e) => panic!(
                    "{e}; install terraform (https://developer.hashicorp.com/terraform/install) to render {}",
                    template.display()
                ),
            }
        }
    }
}

/// `templatefile()` through `terraform console`; `None` when no terraform binary runs.
fn terraform_render(template: &Path, vars: &Map<String, Value>) -> Option<String> {
    let ok = Command::new("terraform")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vars_file = dir.path().join("vars.json");
    std::fs::write(&vars_file, Value::Object(vars.clone()).to_string()).expect("write vars");
    // base64 keeps the console's string quoting out of the way.
    let expr = format!(
        "base64encode(templatefile({:?}, jsondecode(file({:?}))))\n",
        template.display().to_string(),
        vars_file.display().to_string()
    );
    use std::io::Write;
    let mut child = Command::new("terraform")
        .arg("console")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run terraform console");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(expr.as_bytes())
        .expect("write to terraform console");
    let out = child.wait_with_output().expect("terraform console");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "terraform console could not render {}: {}{}",
        template.display(),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let b64 = stdout.trim().trim_matches('"');
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_else(|e| panic!("terraform console printed {stdout:?}, not base64: {e}"));
    Some(String::from_utf8(bytes).expect("user data is UTF-8"))
}

/// `${name}`, `${name + N}`, `${name - N}` and the `$${` escape; anything else is an error that
/// quotes the expression (and `%{` directives are refused).
pub fn subset_render(text: &str, vars: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['$', '%']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("%%{") {
            out.push_str("%{");
            rest = t;
        } else if tail.starts_with("%{") {
            return Err(format!(
                "template directive {:?} is beyond the subset renderer",
                &tail[..tail.find('}').map_or(tail.len(), |e| e + 1)]
            ));
        } else if let Some(t) = tail.strip_prefix("${") {
            let end = t.find('}').ok_or_else(|| {
                format!(
                    "unclosed interpolation at {:?}",
                    &tail[..20.min(tail.len())]
                )
            })?;
            out.push_str(&eval(t[..end].trim(), vars)?);
            rest = &t[end + 1..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn eval(expr: &str, vars: &Map<String, Value>) -> Result<String, String> {
    let lookup = |name: &str| {
        vars.get(name)
            .ok_or_else(|| format!("template variable {name:?} has no value"))
    };
    let is_name =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if is_name(expr) {
        return Ok(match lookup(expr)? {
            Value::String(s) => s.clone(),
            v @ (Value::Number(_) | Value::Bool(_)) => v.to_string(),
            v => return Err(format!("{expr} is {v}, not a string, number or bool")),
        });
    }
    for op in ['+', '-'] {
        if let Some((a, b)) = expr.split_once(op) {
            let (a, b) = (a.trim(), b.trim());
            let n: i64 = b
                .parse()
                .map_err(|_| format!("expression {expr:?} is beyond the subset renderer"))?;
            let v = lookup(a)?
                .as_i64()
                .ok_or_else(|| format!("{a} in {expr:?} is not a whole number"))?;
            return Ok(if op == '+' { v + n } else { v - n }.to_string());
        }
    }
    Err(format!("expression {expr:?} is beyond the subset renderer"))
}

#[test]
fn subset_renderer_matches_templatefile_semantics_and_refuses_the_rest() {
    let vars: Map<String, Value> = serde_json::from_str(r#"{"a":"x","n":30}"#).expect("json");
    assert_eq!(
        subset_render("${a}-${n + 2}-${ n - 30 }-$${a}", &vars).as_deref(),
        Ok("x-32-0-${a}")
    );
    assert!(subset_render("%{ if a }y%{ endif }", &vars).is_err());
    assert!(subset_render("${upper(a)}", &vars).is_err());
    assert!(subset_render("${b}", &vars).is_err());
}
