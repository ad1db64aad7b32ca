//! What every connscale part shares, so that each idea lives in exactly one place:
//! the metric's identity ([`metric`]), the policy file ([`policy`]), the Socket.IO codec ([`sio`]),
//! the cordon's tag ([`cordon`]), connection spread ([`spread`]), process limits ([`limits`]), logging ([`telemetry`]), config loading ([`config`])
//! and the `/metrics` text format ([`prometheus`]).

pub mod config;
pub mod cordon;
pub mod cron;
pub mod limits;
pub mod metric;
pub mod policy;
pub mod prometheus;
pub mod sio;
pub mod spread;
pub mod telemetry;
