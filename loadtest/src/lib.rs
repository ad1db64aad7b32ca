//! loadtest: drives Socket.IO chat fleets from one machine. [`client`] is a lean websocket
//! Socket.IO client; [`ramp`] opens and holds connections; [`chat`] exchanges numbered messages
//! in rooms and checks completeness and latency. Used by the CLI, the benchmarks and the demo.

pub mod chat;
pub mod client;
pub mod ramp;
