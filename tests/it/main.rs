//! The integration suite: one binary, a file per surface.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

mod audit_hardening;
mod audit_trail;
mod aws;
mod command_log;
mod discovered_sessions;
mod discovery;
mod ecs_exec;
mod ecs_ssh;
mod edge;
mod export;
mod faults_disk;
mod faults_idp_aws;
mod faults_shutdown;
mod faults_store;
mod faults_store_gate;
mod faults_target;
mod fleet;
mod identity;
mod policy;
pub(crate) mod postgres;
mod postgres_weak_auth;
mod recording;
mod replay;
mod search;
mod serve;
mod sftp;
pub(crate) mod ssh;
mod targets_check;
mod tidy;
mod tunnel;
pub(crate) mod web;
