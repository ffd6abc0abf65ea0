//! `[[discovery]]`: AWS resources tagged as targets (the discovery service
//! is `src/discovery`).

use std::time::Duration;

use serde::Deserialize;

use super::{HumanDuration, clean};

/// One `[[discovery]]` source.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub source: DiscoverySource,
    /// The tag key that marks a resource as a target (its value names it).
    #[serde(default = "default_discovery_tag")]
    pub tag: String,
    /// ECS clusters to read (`ecs-services` only).
    #[serde(default)]
    pub clusters: Vec<String>,
    #[serde(default = "default_discovery_interval")]
    pub interval: HumanDuration,
}

/// What a `[[discovery]]` source reads.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum DiscoverySource {
    IamRoles,
    EcsServices,
    Rds,
    Ec2Ssm,
}

impl DiscoverySource {
    pub fn name(self) -> &'static str {
        match self {
            DiscoverySource::IamRoles => "iam-roles",
            DiscoverySource::EcsServices => "ecs-services",
            DiscoverySource::Rds => "rds",
            DiscoverySource::Ec2Ssm => "ec2-ssm",
        }
    }
}

fn default_discovery_tag() -> String {
    "pam:target".into()
}

fn default_discovery_interval() -> HumanDuration {
    HumanDuration::secs(300)
}

pub(super) fn read_discovery(
    value: Option<toml::Value>,
    errors: &mut Vec<String>,
) -> Vec<DiscoveryConfig> {
    let Some(value) = value else {
        return Vec::new();
    };
    let toml::Value::Array(items) = value else {
        errors.push("discovery: expected [[discovery]] tables".into());
        return Vec::new();
    };
    let mut out: Vec<DiscoveryConfig> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let label = format!("discovery[{index}]");
        let source: DiscoveryConfig = match item.try_into() {
            Ok(source) => source,
            Err(e) => {
                errors.push(format!(
                    "{label}: {} (source is one of iam-roles, ecs-services, rds, ec2-ssm)",
                    clean(&e.to_string())
                ));
                continue;
            }
        };
        let label = format!("{label} \"{}\"", source.source.name());
        if source.tag.is_empty()
            || source.tag.len() > 128
            || source.tag.chars().any(char::is_control)
        {
            errors.push(format!(
                "{label}.tag: 1 to 128 characters, no control characters"
            ));
        }
        if source.interval.0 < Duration::from_secs(1) {
            errors.push(format!("{label}.interval: must be at least 1s"));
        }
        match source.source {
            DiscoverySource::EcsServices if source.clusters.is_empty() => {
                errors.push(format!("{label}.clusters: name at least one ECS cluster"));
            }
            DiscoverySource::EcsServices => {}
            _ if !source.clusters.is_empty() => {
                errors.push(format!(
                    "{label}.clusters: only for source = \"ecs-services\""
                ));
            }
            _ => {}
        }
        if out
            .iter()
            .any(|d| d.source == source.source && d.tag == source.tag)
        {
            errors.push(format!("{label}: the same source and tag twice"));
        }
        out.push(source);
    }
    out
}
