//! High resolution on the wire: the agent's real PutMetricData requests are captured by a local
//! stand-in for CloudWatch (moto accepts and ignores StorageResolution, so reading back through
//! moto cannot tell), and every datum carries `StorageResolution=1` when the period is under
//! 60 s, and 60 (or nothing, the CloudWatch default) otherwise.

mod common;
use axum::{Router, extract::State, http::HeaderMap, routing::post};
use common::start_agent;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Captured = Arc<Mutex<Vec<String>>>;

/// Answers PutMetricData as CloudWatch's query protocol does and keeps each request body.
async fn capture() -> (String, Captured) {
    let seen: Captured = Arc::default();
    let app = Router::new()
        .route(
            "/",
            post(
                |State(seen): State<Captured>, headers: HeaderMap, body: String| async move {
                    // A compressed body would hide the fields from this check: say so.
                    let body = match headers.get("content-encoding") {
                        Some(e) => format!("compressed ({e:?}), cannot check"),
                        None => body,
                    };
                    seen.lock().expect("lock").push(body);
                    (
                        [("content-type", "text/xml")],
                        r#"<PutMetricDataResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/"><ResponseMetadata><RequestId>e16fc4d3-9a04-11e0-9362-093a1cae5385</RequestId></ResponseMetadata></PutMetricDataResponse>"#,
                    )
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind capture");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(axum::serve(listener, app).into_future());
    (base, seen)
}

/// Per datum (`MetricData.member.N`), its fields, from one form-encoded request body.
fn datums(body: &str) -> BTreeMap<u32, BTreeMap<String, String>> {
    let mut out: BTreeMap<u32, BTreeMap<String, String>> = BTreeMap::new();
    for kv in body.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let Some(rest) = k.strip_prefix("MetricData.member.") else {
            continue;
        };
        let Some((n, field)) = rest.split_once('.') else {
            continue;
        };
        if let Ok(n) = n.parse() {
            out.entry(n)
                .or_default()
                .insert(field.to_string(), v.to_string());
        }
    }
    out
}

/// Runs the agent against the capture with `period` and returns the first PutMetricData body.
async fn first_put(period: &str, spool: Option<&str>) -> String {
    let (base, seen) = capture().await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut env = vec![
        ("AWS_ENDPOINT_URL", base),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_MAX_ATTEMPTS", "1".into()),
        ("CONNSCALE_AGENT_CLOUDWATCH", "on".into()),
        ("CONNSCALE_AGENT_PERIOD", period.into()),
        ("CONNSCALE_INSTANCE_ID", "i-0abc".into()),
        ("CONNSCALE_GROUP", "chat".into()),
    ];
    if let Some(line) = spool {
        let f = dir.path().join("spool.jsonl");
        std::fs::write(&f, format!("{line}\n")).expect("write spool");
        env.push(("CONNSCALE_AGENT_SPOOL", f.display().to_string()));
    }
    let port = connscale_test_support::free_port();
    let _agent = start_agent(&["--port", &port.to_string()], &env);
    for _ in 0..300 {
        if let Some(b) = seen.lock().expect("lock").first() {
            return b.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no PutMetricData reached the capture");
}

#[tokio::test]
async fn a_period_under_60s_is_published_with_storage_resolution_1() {
    let body = first_put("5s", None).await;
    assert!(body.contains("Action=PutMetricData"), "{body}");
    let d = datums(&body);
    assert!(!d.is_empty(), "no datum in {body}");
    for (n, fields) in &d {
        assert_eq!(
            fields.get("StorageResolution").map(String::as_str),
            Some("1"),
            "datum {n} of {body}"
        );
        assert_eq!(
            fields.get("MetricName").map(String::as_str),
            Some("TCPconnections")
        );
    }
}

#[tokio::test]
async fn a_60s_period_is_published_at_standard_resolution() {
    // A point left in the spool from a previous run: published within seconds, not a minute.
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let ts = ts - ts.rem_euclid(60) - 60;
    let point = format!(r#"{{"ts":{ts},"min":3.0,"max":4.0,"sum":210.0,"count":60}}"#);
    let body = first_put("60s", Some(&point)).await;
    let d = datums(&body);
    assert!(!d.is_empty(), "no datum in {body}");
    // The agent's own minute may close in the same request when the test starts just before
    // a minute's end: only the spooled point's datums carry its values.
    let at = std::time::UNIX_EPOCH + Duration::from_secs(ts as u64);
    let spooled = humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace(':', "%3A");
    let mut seen_spooled = 0;
    for (n, fields) in &d {
        let r = fields.get("StorageResolution").map(String::as_str);
        assert!(
            matches!(r, None | Some("60")),
            "datum {n} has StorageResolution {r:?}: {body}"
        );
        if fields.get("Timestamp") == Some(&spooled) {
            seen_spooled += 1;
            let max = fields.get("StatisticValues.Maximum");
            assert_eq!(max.and_then(|m| m.parse::<f64>().ok()), Some(4.0), "{body}");
        }
    }
    assert!(seen_spooled > 0, "no datum at {spooled} in {body}");
}
