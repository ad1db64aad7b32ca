//! Where `--targets-from` finds the nodes: a URL or file listing them (a service-discovery
//! endpoint, the local fleet's target list, a file written by a deploy script).

use std::time::Duration;

/// Parses a target list: a JSON array of strings, `{"targets": [...]}`, or one target per line
/// (blank lines and `#` comments ignored). Bare `IP:PORT` entries get `http://`.
pub fn parse(body: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(a)) => strings(&a)?,
        Ok(serde_json::Value::Object(o)) => match o.get("targets") {
            Some(serde_json::Value::Array(a)) => strings(a)?,
            _ => return Err("a JSON object needs a \"targets\" array of strings".into()),
        },
        _ => body
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    };
    if list.is_empty() {
        return Err("the target list is empty".into());
    }
    Ok(list
        .into_iter()
        .map(|t| {
            if t.contains("://") {
                t
            } else {
                format!("http://{t}")
            }
        })
        .collect())
}

fn strings(a: &[serde_json::Value]) -> Result<Vec<String>, String> {
    a.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("target {v} is not a string"))
        })
        .collect()
}

/// Reads the list from an http(s) URL or a file path.
pub async fn load(from: &str) -> Result<Vec<String>, String> {
    let body = if from.starts_with("http://") || from.starts_with("https://") {
        let r = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?
            .get(from)
            .send()
            .await
            .map_err(|e| format!("cannot fetch targets from {from}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("targets from {from}: HTTP {}", r.status()));
        }
        r.text()
            .await
            .map_err(|e| format!("targets from {from}: {e}"))?
    } else {
        std::fs::read_to_string(from)
            .map_err(|e| format!("cannot read targets from {from}: {e}"))?
    };
    parse(&body).map_err(|e| format!("targets from {from}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_in_every_shape() {
        let want = vec![
            "http://10.0.0.1:3000".to_string(),
            "http://10.0.0.2:3000".to_string(),
        ];
        assert_eq!(
            parse(r#"["http://10.0.0.1:3000","10.0.0.2:3000"]"#).unwrap(),
            want
        );
        assert_eq!(
            parse(r#"{"targets":["10.0.0.1:3000","http://10.0.0.2:3000"]}"#).unwrap(),
            want
        );
        assert_eq!(
            parse("# fleet\n10.0.0.1:3000\n\nhttp://10.0.0.2:3000 # b\n").unwrap(),
            want
        );
        assert!(parse("").is_err());
        assert!(parse(r#"[1, 2]"#).unwrap_err().contains("not a string"));
        assert!(parse(r#"{"nodes": []}"#).is_err());
    }
}
