//! The local fleet as a [`Provider`]: what the AWS group does, done with processes. Setting the
//! desired capacity launches pairs or drains the least-connected ones; terminating drains one
//! (chat-node disconnects its clients over its drain window and exits, as the agent makes it do
//! in the termination lifecycle hook on AWS).

use super::LocalFleet;
use crate::engine::Lifecycle;
use crate::provider::{FleetView, Member, Provider, ProviderError};
use connscale_common::policy::WarmPool;

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
                .filter(|i| !i.draining)
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
        Ok(())
    }
}

impl Provider for LocalFleet {
    async fn observe(&mut self) -> Result<FleetView, ProviderError> {
        self.refresh().await;
        let members = self
            .instances
            .iter()
            .map(|i| {
                let (state, lifecycle) = if i.draining {
                    ("Terminating:Wait", Lifecycle::Draining)
                } else if i.serving {
                    ("InService", Lifecycle::InService)
                } else {
                    ("Pending", Lifecycle::Pending)
                };
                Member {
                    id: i.id.clone(),
                    state: state.into(),
                    lifecycle: Some(lifecycle),
                    healthy: i.healthy,
                    protected: false,
                    launched_at: i.launched_at,
                    connections: i.connections,
                    address: Some(format!("127.0.0.1:{}", i.port)),
                }
            })
            .collect();
        Ok(FleetView {
            name: "local".into(),
            desired: self.desired,
            min_size: self.settings.min_size,
            max_size: self.settings.max_size,
            members,
            warm_pool: None,
            warm_instances: 0,
        })
    }

    async fn set_desired(&mut self, desired: u32) -> Result<(), ProviderError> {
        self.desired = desired;
        self.converge().await
    }

    async fn terminate(&mut self, id: &str, decrement: bool) -> Result<(), ProviderError> {
        if !self.instances.iter().any(|i| i.id == id && !i.draining) {
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

    async fn set_protection(&mut self, _: &[String], _: bool) -> Result<(), ProviderError> {
        // Only the control loop removes local instances; there is no other scale-in to guard from.
        Ok(())
    }

    async fn set_warm_pool(&mut self, pool: Option<&WarmPool>) -> Result<(), ProviderError> {
        match pool {
            None => Ok(()),
            Some(_) => Err(ProviderError::other(
                "local:PutWarmPool",
                "the local fleet has no warm pool (processes start in about a second)",
            )),
        }
    }

    async fn complete_lifecycle(&mut self, _: &str, _: &str, _: bool) -> Result<(), ProviderError> {
        // A draining local instance leaves when its chat-node exits.
        Ok(())
    }
}
