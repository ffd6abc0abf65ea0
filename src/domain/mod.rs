//! Shared vocabulary of the broker, free of I/O: audit events, principals,
//! targets, actions and decisions. Every other module speaks these types.

pub mod audit;
pub mod duration;
pub mod policy;
pub mod principal;
pub mod search;
pub mod session;
