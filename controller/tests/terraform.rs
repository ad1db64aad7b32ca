//! The terraform module matches the policy file: `connscale export terraform` writes only
//! variables the module declares, with matching types; every reference in the module resolves;
//! checkov passes with the listed skips (each with its reason in terraform/.checkov.yaml); and
//! `terraform fmt -check` passes where a terraform binary exists; and every resource type,
//! argument and nested block is in the hashicorp/aws provider's schema (npm @cdktf/provider-aws).

use connscale_common::policy::Policy;
use connscale_test_support::find_tool;
use std::path::PathBuf;
use std::process::Command;

/// This checkout's root, from this test's own crate (test-support's `workspace_root` is baked
/// in where test-support was compiled, which a build directory shared by worktrees may not be).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .expect("controller/ has a parent")
}

fn venv_python() -> PathBuf {
    find_tool(
        "python",
        &[workspace_root().join("target/venv/bin")],
        "scripts/test (creates target/venv with python-hcl2)",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn check(tfvars: &serde_json::Value) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("vars.json");
    std::fs::write(&f, tfvars.to_string()).expect("write");
    let out = Command::new(venv_python())
        .arg(workspace_root().join("terraform/tests/check_module.py"))
        .arg(workspace_root().join("terraform"))
        .arg(&f)
        .output()
        .expect("run check_module.py");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn policy_with_everything() -> Policy {
    let mut p = Policy::default_policy();
    p.schedules.push(connscale_common::policy::Schedule {
        name: "evening".into(),
        cron: "30 22 * * FRI,SAT".into(),
        timezone: "Europe/Paris".into(),
        duration: std::time::Duration::from_secs(3 * 3600),
        min_size: 8,
        desired: Some(10),
    });
    p
}

#[test]
fn exported_variables_exist_with_matching_types_and_references_resolve() {
    for p in [Policy::default_policy(), policy_with_everything()] {
        let vars = connscale::export::terraform_vars(&p).expect("export");
        let (ok, out) = check(&vars);
        assert!(ok, "{out}");
    }
}

#[test]
fn the_checker_catches_unknown_variables_and_wrong_types() {
    let mut vars = connscale::export::terraform_vars(&Policy::default_policy()).expect("export");
    vars["scale_out_treshold"] = 1.into();
    vars["scale_out_steps"][0]["adjustment"] = "two".into();
    vars["warm_pool"] = serde_json::json!({"min_size": 1});
    let (ok, out) = check(&vars);
    assert!(!ok, "{out}");
    for want in [
        "scale_out_treshold",
        "scale_out_steps[0].adjustment",
        "warm_pool.pool_state: required",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn the_example_uses_the_current_export_of_the_default_policy() {
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("terraform/examples/complete/policy.json"))
            .expect("read"),
    )
    .expect("json");
    let fresh = connscale::export::terraform_vars(&Policy::default_policy()).expect("export");
    assert_eq!(
        committed, fresh,
        "regenerate: connscale export terraform --out terraform/examples/complete/policy.json"
    );
}

#[test]
fn heavy_checkov_passes_with_only_the_listed_skips() {
    let checkov = find_tool(
        "checkov",
        &[workspace_root().join("target/venv-checkov/bin")],
        "scripts/test (creates target/venv-checkov)",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tf = workspace_root().join("terraform");
    let out = Command::new(checkov)
        .args(["--quiet", "--compact", "-d"])
        .arg(&tf)
        .arg("--config-file")
        .arg(tf.join(".checkov.yaml"))
        .output()
        .expect("run checkov");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "checkov failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Failed checks: 0"), "{text}");
    let skips = std::fs::read_to_string(tf.join(".checkov.yaml")).expect("read");
    assert!(
        skips_without_reason(&skips).is_empty(),
        "skips without a reason: {:?}",
        skips_without_reason(&skips)
    );
    assert_eq!(
        skips_without_reason("skip-check:\n  - CKV_X\n"),
        vec!["CKV_X"],
        "the reason check itself must bite"
    );
}

#[test]
fn terraform_fmt_is_clean_where_terraform_exists() {
    let Ok(tf) = find_tool("terraform", &[], "") else {
        eprintln!("terraform not on PATH: fmt check skipped (HCL is still parsed by python-hcl2)");
        return;
    };
    let out = Command::new(tf)
        .args(["fmt", "-check", "-recursive"])
        .arg(workspace_root().join("terraform"))
        .output()
        .expect("terraform fmt");
    assert!(
        out.status.success(),
        "terraform fmt -check found unformatted files:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Skip ids not preceded by a comment (directly, or through other skips under one comment).
fn skips_without_reason(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    let mut missing = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(id) = l.strip_prefix("- CKV") {
            let above = lines[..i].iter().rev().find(|a| !a.starts_with("- CKV"));
            if !above.is_some_and(|a| a.starts_with('#')) {
                missing.push(format!("CKV{id}"));
            }
        }
    }
    missing
}

/// Every `service:Action` string in the controller's code (each names the IAM action of an API
/// call, for its error messages), in source order.
fn actions_in(dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = e.path();
        if path.is_dir() {
            actions_in(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).expect("read");
            for piece in text.split('"').skip(1).step_by(2) {
                let service = piece.split(':').next().unwrap_or_default();
                let action = piece.split(':').nth(1).unwrap_or_default();
                if ["autoscaling", "cloudwatch", "ec2", "dynamodb"].contains(&service)
                    && action
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_uppercase())
                    && action.chars().all(|c| c.is_ascii_alphanumeric())
                {
                    out.push(piece.to_string());
                }
            }
        }
    }
}

#[test]
fn the_controller_policy_grants_every_action_the_controller_calls() {
    let mut used = Vec::new();
    actions_in(&workspace_root().join("controller/src"), &mut used);
    used.sort();
    used.dedup();
    assert!(
        used.len() >= 15 && used.contains(&"autoscaling:SetDesiredCapacity".to_string()),
        "scan found too little: {used:?}"
    );
    let iam = std::fs::read_to_string(workspace_root().join("terraform/iam.tf")).expect("iam.tf");
    let start = iam
        .find("data \"aws_iam_policy_document\" \"controller\"")
        .expect("controller policy document in iam.tf");
    let block = &iam[start..];
    let missing: Vec<&String> = used
        .iter()
        .filter(|a| !block.contains(&format!("\"{a}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "terraform/iam.tf's controller policy lacks {missing:?}"
    );
}

/// The pinned @cdktf/provider-aws version the module is checked against.
fn provider_schema_version() -> String {
    std::fs::read_to_string(workspace_root().join("terraform/tests/provider-aws.version"))
        .expect("read terraform/tests/provider-aws.version")
        .trim()
        .to_string()
}

/// Runs provider_schema.py on `module`: (passed, output).
fn schema_check(module: &std::path::Path) -> (bool, String) {
    let pkg = workspace_root().join("target/provider-schema/node_modules/@cdktf/provider-aws");
    let installed = std::fs::read_to_string(pkg.join("package.json")).unwrap_or_default();
    let pin = provider_schema_version();
    assert!(
        installed.contains(&format!("\"version\": \"{pin}\"")),
        "@cdktf/provider-aws {pin} is not in {}: run scripts/test (it installs it)",
        pkg.display()
    );
    let out = Command::new(venv_python())
        .arg(workspace_root().join("terraform/tests/provider_schema.py"))
        .arg(&pkg)
        .arg(module)
        .output()
        .expect("run provider_schema.py");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_resource_argument_and_block_is_in_the_provider_schema() {
    let (ok, out) = schema_check(&workspace_root().join("terraform"));
    println!("{out}");
    assert!(ok, "{out}");
    assert!(out.contains("against hashicorp/aws 6.25.0"), "{out}");
}

#[test]
fn the_schema_check_catches_unknown_types_arguments_and_nested_blocks() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("fleet.tf"),
        r#"
resource "aws_autoscaling_warm_pool" "this" {
  autoscaling_group_name = "x"
}
resource "aws_autoscaling_group" "fleet" {
  count    = 1
  min_size = 1
  max_sise = 2
  warm_pool {
    pool_state = "Stopped"
    instance_reuse_policy {
      reuse_on_scale_inn = true
    }
  }
  dynamic "initial_lifecycle_hook" {
    for_each = {}
    content {
      name      = "x"
      heartbeat = 30
    }
  }
  dynamic "tagz" {
    for_each = {}
    content {}
  }
  lifecycle {
    ignore_changes = [desired_capacity]
  }
}
data "aws_regionn" "current" {}
"#,
    )
    .expect("write");
    std::fs::create_dir_all(dir.path().join("examples/x")).expect("mkdir");
    std::fs::write(
        dir.path().join("examples/x/main.tf"),
        "provider \"aws\" {\n  regoin = \"eu-west-1\"\n}\n",
    )
    .expect("write");
    let (ok, out) = schema_check(dir.path());
    assert!(!ok, "{out}");
    for want in [
        "fleet.tf: aws_autoscaling_warm_pool.this: unknown resource type 'aws_autoscaling_warm_pool'",
        "fleet.tf: aws_autoscaling_group.fleet: unknown argument or block 'max_sise'",
        "fleet.tf: aws_autoscaling_group.fleet.warm_pool.instance_reuse_policy: unknown argument or block 'reuse_on_scale_inn'",
        "fleet.tf: aws_autoscaling_group.fleet.initial_lifecycle_hook: unknown argument or block 'heartbeat'",
        "fleet.tf: aws_autoscaling_group.fleet: unknown block 'tagz'",
        "fleet.tf: data.aws_regionn.current: unknown data source 'aws_regionn'",
        "examples/x/main.tf: provider.aws: unknown argument or block 'regoin'",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert_eq!(out.matches(": unknown").count(), 7, "{out}");
}

/// terraform and an initialised copy of the module's variables.tf alone (no resources, so no
/// provider to download): where `terraform plan` checks the variables' validations.
fn variables_only_module() -> Option<(PathBuf, tempfile::TempDir)> {
    let tf = find_tool("terraform", &[], "").ok()?;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        workspace_root().join("terraform/variables.tf"),
        dir.path().join("variables.tf"),
    )
    .expect("copy variables.tf");
    let init = Command::new(&tf)
        .current_dir(dir.path())
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .args(["init", "-input=false", "-no-color"])
        .output()
        .expect("terraform init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    Some((tf, dir))
}

/// `terraform plan` on the copy of variables.tf in `dir` with the required variables and
/// `overrides` on top: the validation errors, or "" if it passed.
fn plan_errors(
    tf: &std::path::Path,
    dir: &std::path::Path,
    overrides: serde_json::Value,
) -> String {
    let mut base = serde_json::json!({
        "vpc_id": "vpc-1", "subnet_ids": ["a", "b"], "public_subnet_ids": ["a", "b"],
        "ami_id": "ami-1", "release_url": "https://example.com/r.tgz", "api_token": "t",
        "min_size": 1, "max_size": 2, "node_cap": 10, "scale_out_threshold": 5,
        "scale_out_period": 10, "scale_out_evaluation_periods": 1,
        "scale_out_steps": [{"lower": 5, "adjustment": 1}], "instance_warmup": 60,
        "scale_in_threshold": 2, "scale_in_period": 60, "scale_in_evaluation_periods": 3,
        "scale_in_adjustment": 1, "scale_in_cooldown": 60, "name": "chat",
    });
    for (k, v) in overrides.as_object().expect("overrides are an object") {
        base[k] = v.clone();
    }
    std::fs::write(dir.join("case.tfvars.json"), base.to_string()).expect("write");
    let out = Command::new(tf)
        .current_dir(dir)
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .args([
            "plan",
            "-input=false",
            "-no-color",
            "-var-file=case.tfvars.json",
        ])
        .output()
        .expect("terraform plan");
    if out.status.success() {
        String::new()
    } else {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

#[test]
fn name_and_auth_token_validations_admit_what_aws_admits_where_terraform_exists() {
    let Some((tf, dir)) = variables_only_module() else {
        eprintln!("terraform not on PATH: validation check skipped");
        return;
    };
    let good = "Abc-def!&#$^<>123";
    let errors = plan_errors(&tf, dir.path(), serde_json::json!({}));
    assert!(
        errors.is_empty(),
        "no redis_auth_token refused in variables.tf (fleet.tf's precondition asks for it with chat-node):\n{errors}"
    );
    let name_rule = "must not end with a dash or contain two dashes";
    let token_rule = "only ! & # $ ^ < > -";
    for (name, token, want) in [
        ("chat", good, ""),
        ("chat-eu-1", &"a".repeat(16), ""),
        ("chat", &"Z9".repeat(64), ""),
        ("chat-", good, name_rule),
        ("ch--at", good, name_rule),
        ("internal-chat", good, "must not start with"),
        ("chat", &"a".repeat(15), token_rule),
        ("chat", &"a".repeat(129), token_rule),
        ("chat", "abcdefghijklmnop@", token_rule),
        ("chat", "abcdefghijklmnop/", token_rule),
        ("chat", "abcdefghijklmnop\"", token_rule),
        ("chat", "abcdefghijklmnop%", token_rule),
        ("chat", "abcdefghijklmnop q", token_rule),
        ("chat", "abcdefghijklmnopé", token_rule),
    ] {
        let case = serde_json::json!({"name": name, "redis_auth_token": token});
        assert_plan_says(&plan_errors(&tf, dir.path(), case.clone()), want, &case);
    }
}

/// `want` empty: the plan passed; else its errors say `want` (terraform wraps long messages:
/// compared with whitespace folded).
fn assert_plan_says(errors: &str, want: &str, case: &serde_json::Value) {
    if want.is_empty() {
        assert!(errors.is_empty(), "{case} refused:\n{errors}");
    } else {
        let folded = errors.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(folded.contains(want), "{case}: want {want:?} in:\n{errors}");
    }
}

/// `var.service` (a team's own service instead of chat-node) admits a unit and port and refuses
/// what would break the first boot, naming the fix.
#[test]
fn service_validations_refuse_what_the_first_boot_cannot_use_where_terraform_exists() {
    let Some((tf, dir)) = variables_only_module() else {
        eprintln!("terraform not on PATH: validation check skipped");
        return;
    };
    let unit_rule = "must be a systemd unit name ending in .service or .socket";
    let port_rule = "service.port must be a whole number between 1 and 65535";
    let url_rule = "must be an http:// URL on the node itself";
    for (service, want) in [
        (
            serde_json::json!({"unit": "myapp.service", "port": 8080}),
            "",
        ),
        (
            serde_json::json!({"unit": "echo.socket", "port": 7, "install": "apt-get install -y x"}),
            "",
        ),
        (
            serde_json::json!({"unit": "myapp.service", "port": 8080, "drain_url": "http://127.0.0.1:8080/drain"}),
            "",
        ),
        (
            serde_json::json!({"unit": "myapp", "port": 8080}),
            unit_rule,
        ),
        (
            serde_json::json!({"unit": "my app.service", "port": 8080}),
            unit_rule,
        ),
        (
            serde_json::json!({"unit": "myapp.service", "port": 0}),
            port_rule,
        ),
        (
            serde_json::json!({"unit": "myapp.service", "port": 70000}),
            port_rule,
        ),
        (
            serde_json::json!({"unit": "myapp.service", "port": 80.5}),
            port_rule,
        ),
        (
            serde_json::json!({"unit": "myapp.service", "port": 8080, "drain_url": "https://example.com/drain"}),
            url_rule,
        ),
    ] {
        let case = serde_json::json!({"service": service});
        assert_plan_says(&plan_errors(&tf, dir.path(), case.clone()), want, &case);
    }
}

/// The module's text with comments and whitespace runs folded, for structural assertions.
fn module_text(file: &str) -> String {
    std::fs::read_to_string(workspace_root().join("terraform").join(file))
        .expect("read")
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default().trim())
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_group_waits_for_installs_and_the_alb_outlasts_the_drain() {
    let fleet = module_text("fleet.tf");
    for want in [
        "name = local.launch_hook\nlifecycle_transition = \"autoscaling:EC2_INSTANCE_LAUNCHING\"\ndefault_result = \"ABANDON\"\nheartbeat_timeout = var.install_timeout",
        "launch_hook = \"connscale-launch\"",
        "deregistration_delay = var.drain_timeout + var.deregistration_margin",
        "dynamic \"warm_pool\" {",
    ] {
        assert!(fleet.contains(want), "fleet.tf lacks {want:?}:\n{fleet}");
    }
    let network = module_text("network.tf");
    assert!(
        network.contains("deregistration_delay = local.deregistration_delay"),
        "{network}"
    );
    let iam = module_text("iam.tf");
    assert!(
        iam.contains("actions = [\"autoscaling:RecordLifecycleActionHeartbeat\", \"autoscaling:CompleteLifecycleAction\"]\nresources = [local.group_arn]"),
        "{iam}"
    );
}

#[test]
fn the_module_and_apply_create_the_same_heartbeat_fallback_alarms() {
    use connscale::aws::plan;
    let scaling = module_text("scaling.tf");
    let tf_expr = format!(
        "expression = \"{}\"",
        plan::fallback_expression(12345.0).replace("12345", "${each.value.never}")
    );
    // Rust prints the never-values as terraform does (-1, threshold + 1 without ".0").
    assert_eq!(
        plan::fallback_expression(plan::never_breaching(
            "GreaterThanOrEqualToThreshold",
            700.0
        )),
        "IF(FILL(hb, 0) == 0, conns, -1)"
    );
    assert_eq!(
        plan::fallback_expression(plan::never_breaching("LessThanOrEqualToThreshold", 400.0)),
        "IF(FILL(hb, 0) == 0, conns, 401)"
    );
    for want in [
        tf_expr.as_str(),
        "never = -1",
        "never = var.scale_in_threshold + 1",
        &format!("heartbeat_metric = \"{}\"", plan::HEARTBEAT_METRIC),
        &format!("id = \"{}\"\nreturn_data = false", plan::CONNS_ID),
        &format!("id = \"{}\"\nreturn_data = false", plan::HEARTBEAT_ID),
        &format!("id = \"{}\"", plan::FALLBACK_ID),
        "comparison = \"GreaterThanOrEqualToThreshold\"",
        "comparison = \"LessThanOrEqualToThreshold\"",
        "missing = \"missing\"",
        "missing = \"notBreaching\"",
    ] {
        assert!(
            scaling.contains(want),
            "scaling.tf lacks {want:?}:\n{scaling}"
        );
    }
    let iam = module_text("iam.tf");
    assert!(
        iam.contains("sid = \"Heartbeat\"\nactions = [\"cloudwatch:PutMetricData\"]"),
        "{iam}"
    );
}
