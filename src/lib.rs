//! pam: a Privileged Access Management bastion and session broker for AWS.
//!
//! Users log in once with the company IdP; the broker hands out short-lived
//! credentials, brokers SSH, ECS Exec and PostgreSQL sessions with
//! credentials users never see, decides every access with Cedar policy, and
//! records everything in a tamper-evident audit trail.
//!
//! Read `ARCHITECTURE.md` first; modules are listed in reading order.

pub mod api;
pub mod discovery;
pub mod domain;

pub mod config;
pub mod metrics;
pub mod sync;

pub mod audit;
pub mod aws;
pub mod ecs;
pub mod edge;
pub mod export;
pub mod identity;
pub mod keys;
pub mod policy;
pub mod search;
pub mod sessions;
pub mod ssm;
pub mod store;

pub mod pg;
pub mod ssh;
pub mod web;

pub mod app;
pub mod cli;
