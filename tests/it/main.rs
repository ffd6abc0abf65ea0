//! The integration suite: one binary, a file per surface.

mod support;

mod audit_trail;
mod serve;
mod tidy;
