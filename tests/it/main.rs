//! The integration suite: one binary, a file per surface.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

mod audit_trail;
mod aws;
mod identity;
mod policy;
mod serve;
mod ssh;
mod tidy;
