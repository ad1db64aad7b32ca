//! The connscale controller: the policy engine ([`engine`]), the trace simulator ([`sim`]),
//! fleets behind one [`provider::Provider`] trait (AWS in [`aws`], processes on this machine in
//! [`local`]), the control loop ([`control`], [`operate`]) and the operators' CLI ([`cli`]).

pub mod aws;
pub mod cli;
pub mod control;
pub mod demo;
pub mod engine;
pub mod export;
pub mod local;
pub mod operate;
pub mod provider;
pub mod sim;
pub mod suggest;
