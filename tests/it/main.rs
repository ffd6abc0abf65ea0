//! The integration suite: one binary, a file per surface.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

mod audit_trail;
mod ecs_exec;
mod identity;
mod policy;
mod serve;
mod tidy;
