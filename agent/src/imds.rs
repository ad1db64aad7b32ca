//! EC2 instance metadata (IMDSv2): identity, the target lifecycle state and the controller's
//! cordon tag.

use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// A small IMDSv2 client: a session token, then GETs.
#[derive(Clone)]
pub struct Imds {
    endpoint: String,
    http: reqwest::Client,
}

impl Imds {
    pub fn new(endpoint: Option<&str>) -> Self {
        Self {
            endpoint: endpoint
                .unwrap_or(DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn token(&self) -> Result<String, String> {
        let r = self
            .http
            .put(format!("{}/latest/api/token", self.endpoint))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            .send()
            .await
            .map_err(|e| format!("IMDS at {} unreachable: {e}", self.endpoint))?;
        if !r.status().is_success() {
            return Err(format!("IMDS token request returned {}", r.status()));
        }
        r.text().await.map_err(|e| e.to_string())
    }

    /// GET /latest/meta-data/{path}; any answer but a success is an error.
    pub async fn get(&self, path: &str) -> Result<String, String> {
        self.get_optional(path)
            .await?
            .ok_or_else(|| format!("IMDS {path} returned 404 Not Found"))
    }

    /// GET /latest/meta-data/{path}, with `Ok(None)` when IMDS has no such path (404: e.g. an
    /// instance tag that is not set); other failures are errors.
    pub async fn get_optional(&self, path: &str) -> Result<Option<String>, String> {
        let token = self.token().await?;
        let r = self
            .http
            .get(format!("{}/latest/meta-data/{path}", self.endpoint))
            .header("X-aws-ec2-metadata-token", token)
            .send()
            .await
            .map_err(|e| format!("IMDS {path}: {e}"))?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(format!("IMDS {path} returned {}", r.status()));
        }
        r.text()
            .await
            .map(|s| Some(s.trim().to_string()))
            .map_err(|e| e.to_string())
    }

    pub async fn instance_id(&self) -> Result<String, String> {
        self.get("instance-id").await
    }

    pub async fn region(&self) -> Result<String, String> {
        self.get("placement/region").await
    }

    /// Needs instance metadata tags enabled on the launch template (the terraform module does).
    pub async fn group(&self) -> Result<String, String> {
        self.get("tags/instance/aws:autoscaling:groupName").await
    }

    /// `InService`, `Terminated`, `Warmed:*`, ... (`autoscaling/target-lifecycle-state`).
    pub async fn target_lifecycle_state(&self) -> Result<String, String> {
        self.get("autoscaling/target-lifecycle-state").await
    }

    /// The controller's cordon tag (`tags/instance/connscale-cordon`, see
    /// [`connscale_common::cordon`]): its value, `None` when the instance has no such tag (or
    /// instance metadata tags are off).
    pub async fn cordon_tag(&self) -> Result<Option<String>, String> {
        self.get_optional(&format!("tags/instance/{}", connscale_common::cordon::TAG))
            .await
    }
}
