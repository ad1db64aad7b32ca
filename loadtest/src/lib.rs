//! loadtest: drives Socket.IO chat fleets from one machine. [`client`] is a lean websocket
//! Socket.IO client; [`pool`] opens and holds connections, which [`ramp`] reports on; [`chat`]
//! exchanges numbered messages in rooms and checks completeness and latency; [`capacity`] finds
//! how many connections one node sustains; [`distribution`] reads per-node counts from the
//! agents. Used by the CLI, the benchmarks and the demo.

pub mod capacity;
pub mod chat;
pub mod client;
pub mod distribution;
pub mod pool;
pub mod ramp;
pub mod targets;
