//! `connscale-agent fetch-credentials` against moto's SSM: SecureString parameters land in the
//! credentials directory, decrypted, mode 0600 in a 0700 directory, and no value is printed; a
//! missing parameter fails at once with its name.

use aws_sdk_ssm::types::ParameterType;
use connscale_test_support::MotoServer;
use std::os::unix::fs::PermissionsExt;

async fn fetch(moto: &MotoServer, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_connscale-agent"))
        .arg("fetch-credentials")
        .args(args)
        .envs(moto.env())
        .env("CONNSCALE_IMDS_ENDPOINT", "http://127.0.0.1:9") // never the real IMDS
        .kill_on_drop(true)
        .output()
        .await
        .expect("run fetch-credentials");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn secure_strings_become_private_credential_files() {
    let moto = MotoServer::start();
    moto.reset().await;
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config().await);
    let secrets = [
        ("/connscale/test/api-token", "tok-9f8e7d"),
        ("/connscale/test/redis-auth", "r3dis#auth&more"),
    ];
    for (name, value) in secrets {
        ssm.put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::SecureString)
            .send()
            .await
            .expect("PutParameter");
    }
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path().join("run/connscale/credentials");
    let d = dir.to_str().expect("utf8");
    let (code, out) = fetch(
        &moto,
        &[
            "--parameter",
            "api-token=/connscale/test/api-token",
            "--parameter",
            "redis-auth=/connscale/test/redis-auth",
            "--dir",
            d,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "directory mode");
    for (file, (_, value)) in ["api-token", "redis-auth"].iter().zip(secrets) {
        let f = dir.join(file);
        assert_eq!(
            std::fs::read_to_string(&f).expect("read"),
            value,
            "{file}: decrypted value"
        );
        assert_eq!(mode(&f), 0o600, "{file} mode");
        assert!(!out.contains(value), "a value was printed: {out}");
    }
    assert_eq!(
        std::fs::read_dir(&dir).expect("ls").count(),
        2,
        "no temporary file left"
    );

    // A parameter that does not exist: a clear error naming it, at once (not retried).
    let (code, out) = fetch(
        &moto,
        &["--parameter", "x=/connscale/test/missing", "--dir", d],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("/connscale/test/missing") && out.contains("ParameterNotFound"),
        "{out}"
    );
}
