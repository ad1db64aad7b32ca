//! The user-data templates and what fleet.tf / controller.tf pass them: every variable a template
//! uses is documented in its header and passed by its templatefile() call (a missing one fails
//! only at `terraform plan`, which the tests cannot run), and no secret is passed (user data is
//! readable with ec2:DescribeInstanceAttribute; the nodes read secrets from SSM).

use std::collections::BTreeSet;
use std::path::PathBuf;

/// This checkout's terraform/ (from this crate's own manifest dir: test-support's
/// `workspace_root` is fixed when test-support is compiled, which a shared build dir may have
/// done for another checkout).
fn terraform_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../terraform")
}

/// The template variables a `.tftpl` interpolates: `${name...}` and `%{ if name ... }`, skipping
/// `$${...}` (a literal `${` for the shell).
fn used_variables(template: &str) -> BTreeSet<String> {
    let bytes = template.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        let escaped = i > 0 && bytes[i - 1] == b'$';
        if (bytes[i] == b'$' || bytes[i] == b'%') && bytes[i + 1] == b'{' && !escaped {
            let rest = &template[i + 2..];
            let rest = rest.trim_start();
            let rest = rest.strip_prefix("if ").unwrap_or(rest).trim_start();
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !["endif", "else"].contains(&name.as_str()) {
                out.insert(name);
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

/// The keys of the map a templatefile("…/templates/FILE", { … }) call passes.
fn passed_variables(tf: &str, file: &str) -> BTreeSet<String> {
    let start = tf
        .find(&format!("templates/{file}\", {{"))
        .unwrap_or_else(|| panic!("no templatefile call for {file}"));
    let body = &tf[start..];
    let body = &body[body.find('{').expect("map") + 1..body.find("}))").expect("end of call")];
    body.lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty())
        .collect()
}

/// The variable names the header comment documents (`#   name   description`).
fn documented_variables(template: &str) -> BTreeSet<String> {
    template
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("#   "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn check(template_file: &str, tf_file: &str) {
    let root = terraform_dir();
    let template = std::fs::read_to_string(root.join("templates").join(template_file))
        .unwrap_or_else(|e| panic!("{template_file}: {e}"));
    let tf = std::fs::read_to_string(root.join(tf_file)).unwrap_or_else(|e| panic!("{e}"));
    let used = used_variables(&template);
    let passed = passed_variables(&tf, template_file);
    let documented = documented_variables(&template);
    assert!(!used.is_empty(), "{template_file} uses no variables?");
    let missing: Vec<_> = used.difference(&passed).collect();
    assert!(
        missing.is_empty(),
        "{tf_file} does not pass {missing:?} to {template_file}"
    );
    let unused: Vec<_> = passed.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "{tf_file} passes {unused:?}, which {template_file} never uses"
    );
    let undocumented: Vec<_> = used.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "{template_file}'s header does not document {undocumented:?}"
    );
    let call = &tf[tf.find(&format!("templates/{template_file}")).unwrap_or(0)..];
    let call = &call[..call.find("}))").unwrap_or(call.len())];
    for secret in ["var.api_token", "var.redis_auth_token"] {
        assert!(
            !call.contains(secret),
            "{tf_file} passes {secret} into user data, which anyone with \
             ec2:DescribeInstanceAttribute can read: pass the SSM parameter's name instead"
        );
    }
}

#[test]
fn node_user_data_gets_every_variable_it_uses_and_no_secret() {
    check("user_data.sh.tftpl", "fleet.tf");
}

#[test]
fn controller_user_data_gets_every_variable_it_uses_and_no_secret() {
    check("controller_user_data.sh.tftpl", "controller.tf");
}

#[test]
fn the_template_scanner_sees_interpolations_and_skips_shell_ones() {
    let t = "a ${x} $${y} ${z + 2} %{ if w != \"\" ~}q%{ endif ~} ${ v }";
    let got: Vec<_> = used_variables(t).into_iter().collect();
    assert_eq!(got, ["v", "w", "x", "z"]);
}
