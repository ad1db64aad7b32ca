//! The local fleet as a [`Provider`]: what the AWS group does, done with processes. Setting the
//! desired capacity launches pairs (from the warm pool first) or scales in the least-connected
//! ones; terminating scales one in. A scale-in goes through the instance's lifecycle hook: its
//! own agent drains chat-node and completes the hook (see [`super::stand_in`]).

use super::LocalFleet;
use crate::engine::Lifecycle;
use crate::provider::{FleetView, Member, Provider, ProviderError};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl LocalFleet {
    /// Launches or drains until the non-draining instances match `desired`.
    async fn converge(&mut self) -> Result<(), ProviderError> {
        while self.capacity() < self.desired {
            self.launch(now())
                .map_err(|e| ProviderError::other("local:Launch", e))?;
        }
        while self.capacity() > self.desired {
            let Some(id) = self
                .instances
                .iter()
                .filter(|i| !i.draining && !i.warmed)
                // A silent instance is never the least connected: it may hold many clients.
                .min_by_key(|i| {
                    (
                        i.connections.is_none(),
                        i.connections,
                        std::cmp::Reverse(i.launched_at),
                    )
                })
                .map(|i| i.id.clone())
            else {
                break;
            };
            self.drain(&id).await;
        }
        self.fill_pool(now())
            .map_err(|e| ProviderError::other("local:PutWarmPool", e))
    }
}

impl Provider for LocalFleet {
    async fn observe(&mut self) -> Result<FleetView, ProviderError> {
        self.refresh().await;
        let members = self
            .instances
            .iter()
            .filter(|i| !i.warmed)
            .map(|i| {
                let (state, lifecycle) = if i.draining {
                    let state = self
                        .stand_in
                        .wait_state(&i.id)
                        .unwrap_or_else(|| "Terminating".into());
                    (state, Lifecycle::Draining)
                } else if i.serving {
                    ("InService".into(), Lifecycle::InService)
                } else {
                    ("Pending".into(), Lifecycle::Pending)
                };
                Member {
                    id: i.id.clone(),
                    state,
                    lifecycle: Some(lifecycle),
                    healthy: i.healthy,
                    protected: false,
                    launched_at: i.launched_at,
                    connections: i.connections,
                    address: Some(format!("127.0.0.1:{}", i.port)),
                    cordoned_until: self
                        .stand_in
                        .cordon(&i.id)
                        .as_deref()
                        .map(connscale_common::cordon::until),
                    cordoned_since: self
                        .stand_in
                        .cordon(&i.id)
                        .as_deref()
                        .and_then(connscale_common::cordon::since),
                }
            })
            .collect();
        Ok(FleetView {
            name: "local".into(),
            desired: self.desired,
            min_size: self.settings.min_size,
            max_size: self.settings.max_size,
            members,
            warm_pool: self.settings.warm_pool.clone(),
            warm_instances: self.warm_instances(),
            pool_terminations: Vec::new(),
        })
    }

    async fn set_desired(&mut self, desired: u32) -> Result<(), ProviderError> {
        self.desired = desired;
        self.converge().await
    }

    async fn terminate(&mut self, id: &str, decrement: bool) -> Result<(), ProviderError> {
        if !self
            .instances
            .iter()
            .any(|i| i.id == id && !i.draining && !i.warmed)
        {
            return Err(ProviderError::other(
                "local:Terminate",
                format!("no serving local instance {id}"),
            ));
        }
        self.drain(id).await;
        if decrement {
            self.desired = self.desired.saturating_sub(1);
        }
        self.converge().await
    }

    async fn cordon(&mut self, id: &str, until: i64, since: i64) -> Result<(), ProviderError> {
        let value = connscale_common::cordon::value(until, since);
        self.stand_in.set_cordon(id, Some(value));
        Ok(())
    }

    async fn uncordon(&mut self, id: &str) -> Result<(), ProviderError> {
        self.stand_in.set_cordon(id, None);
        Ok(())
    }
}
