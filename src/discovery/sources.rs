//! Reading one `[[discovery]]` source from AWS: the tagged resources and
//! the facts a target needs (`resource::Found`). A failed call fails the
//! whole read, so the caller keeps the source's last good set.

use std::collections::BTreeMap;

use crate::aws::Aws;
use crate::aws::error::ApiError;
use crate::config::{DiscoveryConfig, DiscoverySource};

use super::LIMIT;
use super::resource::{Found, Shape};

/// IAM `ListRoleTags` calls in flight at once.
const IAM_CONCURRENCY: usize = 8;

/// Every resource of `source` that carries its tag.
pub async fn read(aws: &Aws, source: &DiscoveryConfig) -> Result<Vec<Found>, ApiError> {
    let tag = source.tag.as_str();
    match source.source {
        DiscoverySource::IamRoles => {
            let roles = crate::aws::iam::tagged_roles(aws, tag, LIMIT, IAM_CONCURRENCY).await?;
            Ok(roles
                .into_iter()
                .map(|role| Found {
                    resource: role.arn.clone(),
                    fallback_name: role.name.clone(),
                    tags: role.tags,
                    shape: Shape::Role {
                        arn: role.arn,
                        max_session_duration: role.max_session_duration,
                    },
                })
                .collect())
        }
        DiscoverySource::EcsServices => {
            let mut out = Vec::new();
            let mut definitions: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for cluster in &source.clusters {
                let services = crate::aws::ecs::services(aws, cluster, LIMIT).await?;
                for service in services {
                    if !service.tags.contains_key(tag) {
                        continue;
                    }
                    let containers = match &service.task_definition {
                        Some(arn) => match definitions.get(arn) {
                            Some(c) => c.clone(),
                            None => {
                                let c =
                                    crate::aws::ecs::task_definition(aws, arn).await?.containers;
                                definitions.insert(arn.clone(), c.clone());
                                c
                            }
                        },
                        None => Vec::new(),
                    };
                    out.push(Found {
                        resource: if service.arn.is_empty() {
                            format!("{cluster}/{}", service.name)
                        } else {
                            service.arn.clone()
                        },
                        fallback_name: service.name.clone(),
                        tags: service.tags,
                        shape: Shape::Service {
                            cluster: cluster.clone(),
                            service: service.name,
                            containers,
                        },
                    });
                }
            }
            Ok(out)
        }
        DiscoverySource::Rds => {
            let mut databases = crate::aws::rds_describe::instances(aws, LIMIT).await?;
            databases.extend(crate::aws::rds_describe::clusters(aws, LIMIT).await?);
            Ok(databases
                .into_iter()
                .filter(|db| db.tags.contains_key(tag))
                .map(|db| Found {
                    resource: if db.arn.is_empty() {
                        db.identifier.clone()
                    } else {
                        db.arn.clone()
                    },
                    fallback_name: db.identifier.clone(),
                    tags: db.tags,
                    shape: Shape::Database {
                        engine: db.engine,
                        address: db.address,
                        port: db.port,
                        iam_auth: db.iam_auth,
                        database: db.database,
                    },
                })
                .collect())
        }
        DiscoverySource::Ec2Ssm => {
            let instances = crate::aws::ec2::tagged_instances(aws, tag, LIMIT).await?;
            let ids: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
            let managed = if ids.is_empty() {
                BTreeMap::new()
            } else {
                crate::aws::ssm::managed_instances(aws, &ids).await?
            };
            Ok(instances
                .into_iter()
                .map(|instance| Found {
                    resource: instance.instance_id.clone(),
                    fallback_name: instance.instance_id.clone(),
                    shape: Shape::Instance {
                        ssm_ping: managed.get(&instance.instance_id).cloned(),
                        instance_id: instance.instance_id,
                    },
                    tags: instance.tags,
                })
                .collect())
        }
    }
}
