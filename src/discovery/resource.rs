//! From a tagged AWS resource to a target (pure, no I/O): the name from the
//! discovery tag, the kind's settings from `pam:*` parameter tags, and every
//! other `pam:*` tag as a policy tag (`pam:env` = `prod` becomes the Cedar
//! resource tag `env`). A resource with any hostile tag (a name out of the
//! target charset, a value too long or with control bytes) is refused whole,
//! never half-taken: a policy guardrail keyed on a dropped tag would no
//! longer apply to it.

use std::collections::BTreeMap;

use crate::config::{
    AwsTarget, Credential, EcsTarget, HumanDuration, PostgresTarget, SshTarget, TargetConfig,
    TargetKind, TlsMode, Via, valid_target_name,
};

/// The prefix of the tags discovery reads.
pub const PREFIX: &str = "pam:";
/// Tags that set a target's parameters rather than policy tags.
const PARAMETERS: [&str; 10] = [
    "container",
    "database",
    "db_user",
    "secret",
    "host_key",
    "login",
    "tls",
    "external_id",
    "max_duration",
    "port",
];
/// AWS allows 256 characters in a tag value.
const MAX_VALUE: usize = 256;

/// What a source found: one AWS resource and what is needed to make it a
/// target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The resource's ARN (or id), for messages and the audit trail.
    pub resource: String,
    /// The name used when the discovery tag's value is empty or `true`.
    pub fallback_name: String,
    pub tags: BTreeMap<String, String>,
    pub shape: Shape,
}

/// The kind-specific facts a source read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Role {
        arn: String,
        max_session_duration: u32,
    },
    Service {
        cluster: String,
        service: String,
        /// Containers of the service's task definition.
        containers: Vec<String>,
    },
    Database {
        engine: String,
        address: Option<String>,
        port: Option<u16>,
        iam_auth: bool,
        database: Option<String>,
    },
    Instance {
        instance_id: String,
        /// SSM's ping status; `None` when SSM does not manage the instance.
        ssm_ping: Option<String>,
    },
}

/// A target made from a resource, with where it came from.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub target: TargetConfig,
    pub resource: String,
}

/// Makes a target of `found` (`tag` is the discovery tag key), or says why not.
pub fn to_target(found: &Found, tag: &str) -> Result<Discovered, String> {
    for (key, value) in &found.tags {
        if !key.starts_with(PREFIX) && key != tag {
            continue;
        }
        if value.len() > MAX_VALUE {
            return Err(format!(
                "tag {}: value longer than {MAX_VALUE} characters",
                printable(key)
            ));
        }
        if value.chars().any(char::is_control) || key.chars().any(char::is_control) {
            return Err(format!(
                "tag {}: control characters in the tag",
                printable(key)
            ));
        }
        if let Some(short) = key.strip_prefix(PREFIX)
            && key != tag
            && !valid_tag_key(short)
        {
            return Err(format!(
                "tag {}: use letters, digits, '_', '-' and '.' after {PREFIX}",
                printable(key)
            ));
        }
    }
    let marker = found.tags.get(tag).ok_or_else(|| format!("no {tag} tag"))?;
    let name = if marker.is_empty() || marker == "true" {
        found.fallback_name.clone()
    } else {
        marker.clone()
    };
    if !valid_target_name(&name) {
        return Err(format!(
            "target name {} from tag {tag}: use letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63",
            printable(&name)
        ));
    }
    let param = |key: &str| {
        found
            .tags
            .get(&format!("{PREFIX}{key}"))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let mut tags = BTreeMap::new();
    for (key, value) in &found.tags {
        if key == tag {
            continue;
        }
        if let Some(short) = key.strip_prefix(PREFIX)
            && !PARAMETERS.contains(&short)
        {
            tags.insert(short.to_owned(), value.clone());
        }
    }
    let kind = match &found.shape {
        Shape::Role {
            arn,
            max_session_duration,
        } => {
            let max_duration = match param("max_duration") {
                Some(text) => HumanDuration::parse(&text)
                    .map_err(|e| format!("tag {PREFIX}max_duration: {e}"))?,
                None => HumanDuration::secs(u64::from(*max_session_duration).min(3600)),
            };
            TargetKind::Aws(AwsTarget {
                role_arn: arn.clone(),
                max_duration,
                external_id: param("external_id"),
                session_policy: None,
            })
        }
        Shape::Service {
            cluster,
            service,
            containers,
        } => {
            let container = match param("container") {
                Some(container) => {
                    if !containers.is_empty() && !containers.contains(&container) {
                        return Err(format!(
                            "tag {PREFIX}container names {}, which the task definition does not have",
                            printable(&container)
                        ));
                    }
                    container
                }
                None => match containers.as_slice() {
                    [only] => only.clone(),
                    [] => return Err("the task definition has no container".into()),
                    _ => {
                        return Err(format!(
                            "{} containers: tag {PREFIX}container names the one to use",
                            containers.len()
                        ));
                    }
                },
            };
            TargetKind::Ecs(EcsTarget {
                cluster: cluster.clone(),
                service: Some(service.clone()),
                task: None,
                container,
                command: None,
            })
        }
        Shape::Database {
            engine,
            address,
            port,
            iam_auth,
            database,
        } => {
            if !engine.contains("postgres") {
                return Err(format!("engine {} is not PostgreSQL", printable(engine)));
            }
            let address = address
                .as_deref()
                .ok_or("the database has no endpoint yet")?;
            let port = port.unwrap_or(5432);
            let db_user = param("db_user");
            let credential = if *iam_auth {
                Credential::RdsIam {
                    db_user: db_user.clone().ok_or_else(|| {
                        format!(
                            "IAM authentication is on: tag {PREFIX}db_user names the database user"
                        )
                    })?,
                }
            } else {
                Credential::Secretsmanager {
                    secret_id: param("secret").ok_or_else(|| {
                        format!("IAM authentication is off: tag {PREFIX}secret names the Secrets Manager secret")
                    })?,
                }
            };
            let tls = match param("tls").as_deref() {
                None | Some("verify-full") => TlsMode::VerifyFull,
                Some("verify-ca") => TlsMode::VerifyCa,
                Some("require") => TlsMode::Require,
                Some(other) => {
                    return Err(format!(
                        "tag {PREFIX}tls: {} is not one of verify-full, verify-ca, require",
                        printable(other)
                    ));
                }
            };
            TargetKind::Postgres(PostgresTarget {
                address: format!("{address}:{port}"),
                database: param("database")
                    .or_else(|| database.clone())
                    .unwrap_or_else(|| "postgres".into()),
                db_user,
                credential,
                tls,
                ca_file: None,
                via: None,
                connect_timeout: HumanDuration::secs(10),
                allow_weak_auth: false,
            })
        }
        Shape::Instance {
            instance_id,
            ssm_ping,
        } => {
            match ssm_ping.as_deref() {
                None => return Err("the instance is not managed by SSM".into()),
                Some("Online") => {}
                Some(other) => {
                    return Err(format!(
                        "the SSM agent is {} (not Online)",
                        printable(other)
                    ));
                }
            }
            let host_key = param("host_key").ok_or_else(|| {
                format!("no host key: tag {PREFIX}host_key pins it (`ssh-ed25519 AAAA...`)")
            })?;
            if russh::keys::ssh_key::PublicKey::from_openssh(host_key.trim()).is_err() {
                return Err(format!("tag {PREFIX}host_key is not an OpenSSH public key"));
            }
            let port = match param("port") {
                Some(p) => p
                    .parse::<u16>()
                    .map_err(|_| format!("tag {PREFIX}port: not a port number"))?,
                None => 22,
            };
            let login = param("login").unwrap_or_else(|| "ec2-user".into());
            if !valid_tag_key(&login) {
                return Err(format!("tag {PREFIX}login: not a login name"));
            }
            TargetKind::Ssh(SshTarget {
                address: format!("localhost:{port}"),
                host_key: Some(host_key),
                host_ca: None,
                login,
                logins: Vec::new(),
                credential: Credential::BrokerCa,
                connect_timeout: HumanDuration::secs(10),
                via: Some(Via {
                    ssm_target: instance_id.clone(),
                }),
            })
        }
    };
    Ok(Discovered {
        target: TargetConfig { name, tags, kind },
        resource: found.resource.clone(),
    })
}

fn valid_tag_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A value as it may appear in a message: at most 64 characters, control
/// characters escaped.
pub fn printable(text: &str) -> String {
    let short: String = text.chars().take(64).collect();
    let mut out = format!("{short:?}");
    if text.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// What describes a target for the audit trail and for change detection:
/// its kind, settings (no secrets: only secret ids) and tags.
pub fn describe(target: &TargetConfig) -> serde_json::Value {
    use serde_json::json;
    let settings = match &target.kind {
        TargetKind::Aws(a) => json!({
            "role_arn": a.role_arn,
            "max_duration": a.max_duration.to_string(),
            "external_id": a.external_id.is_some(),
        }),
        TargetKind::Ecs(e) => json!({
            "cluster": e.cluster, "service": e.service, "container": e.container,
        }),
        TargetKind::Postgres(p) => json!({
            "address": p.address,
            "database": p.database,
            "db_user": p.db_user,
            "credential": match &p.credential {
                Credential::RdsIam { db_user } => json!({"from": "rds-iam", "db_user": db_user}),
                Credential::Secretsmanager { secret_id } => json!({"from": "secretsmanager", "secret_id": secret_id}),
                Credential::BrokerCa => json!({"from": "broker-ca"}),
            },
        }),
        TargetKind::Ssh(s) => json!({
            "address": s.address,
            "via": s.via.as_ref().map(|v| v.ssm_target.clone()),
            "login": s.login,
            "host_key": s.host_key,
        }),
    };
    json!({"kind": target.kind_name(), "settings": settings, "tags": target.tags})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(tags: &[(&str, &str)]) -> Found {
        Found {
            resource: "arn:aws:iam::123456789012:role/ProdReadOnly".into(),
            fallback_name: "ProdReadOnly".into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            shape: Shape::Role {
                arn: "arn:aws:iam::123456789012:role/ProdReadOnly".into(),
                max_session_duration: 7200,
            },
        }
    }

    #[test]
    fn pam_tags_become_policy_tags_and_parameters_do_not() {
        let d = to_target(
            &role(&[
                ("pam:target", "prod-readonly"),
                ("pam:env", "prod"),
                ("pam:external_id", "xyz"),
                ("team", "payments"),
            ]),
            "pam:target",
        )
        .unwrap();
        assert_eq!(d.target.name, "prod-readonly");
        assert_eq!(
            d.target.tags,
            BTreeMap::from([("env".to_owned(), "prod".to_owned())])
        );
        let TargetKind::Aws(aws) = &d.target.kind else {
            panic!("not an aws target")
        };
        assert_eq!(aws.external_id.as_deref(), Some("xyz"));
        assert_eq!(aws.max_duration, HumanDuration::secs(3600));
    }

    #[test]
    fn an_empty_or_true_marker_takes_the_resource_name() {
        for marker in ["", "true"] {
            let d = to_target(&role(&[("pam:target", marker)]), "pam:target").unwrap();
            assert_eq!(d.target.name, "ProdReadOnly");
        }
    }

    #[test]
    fn hostile_tags_refuse_the_whole_resource() {
        let long = "x".repeat(300);
        for (tags, why) in [
            (vec![("pam:target", "bad name!")], "target name"),
            (vec![("pam:target", "a\u{1b}[31m")], "control"),
            (vec![("pam:target", "ok"), ("pam:env", "prod\n")], "control"),
            (
                vec![("pam:target", "ok"), ("pam:env", long.as_str())],
                "longer",
            ),
            (vec![("pam:target", "ok"), ("pam:e nv", "x")], "letters"),
            (vec![("pam:target", &long[..64])], "target name"),
        ] {
            let err = to_target(&role(&tags), "pam:target").unwrap_err();
            assert!(err.contains(why), "{tags:?}: {err}");
            assert!(!err.contains('\u{1b}') && !err.contains('\n'), "{err:?}");
        }
    }

    #[test]
    fn a_service_needs_one_container_or_a_tag() {
        let found = |containers: &[&str], tags: &[(&str, &str)]| Found {
            resource: "svc".into(),
            fallback_name: "orders-api".into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            shape: Shape::Service {
                cluster: "prod".into(),
                service: "orders-api".into(),
                containers: containers.iter().map(|c| (*c).to_owned()).collect(),
            },
        };
        let one = to_target(&found(&["app"], &[("pam:target", "")]), "pam:target").unwrap();
        let TargetKind::Ecs(ecs) = &one.target.kind else {
            panic!()
        };
        assert_eq!(ecs.container, "app");
        assert!(
            to_target(
                &found(&["app", "envoy"], &[("pam:target", "")]),
                "pam:target"
            )
            .is_err()
        );
        let tagged = to_target(
            &found(
                &["app", "envoy"],
                &[("pam:target", ""), ("pam:container", "envoy")],
            ),
            "pam:target",
        )
        .unwrap();
        let TargetKind::Ecs(ecs) = &tagged.target.kind else {
            panic!()
        };
        assert_eq!(ecs.container, "envoy");
    }

    #[test]
    fn a_database_uses_iam_auth_or_names_a_secret() {
        let found = |iam_auth: bool, tags: &[(&str, &str)]| Found {
            resource: "db".into(),
            fallback_name: "orders".into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            shape: Shape::Database {
                engine: "postgres".into(),
                address: Some("orders.rds".into()),
                port: Some(5432),
                iam_auth,
                database: Some("orders".into()),
            },
        };
        let iam = to_target(
            &found(true, &[("pam:target", ""), ("pam:db_user", "pam_ro")]),
            "pam:target",
        )
        .unwrap();
        let TargetKind::Postgres(pg) = &iam.target.kind else {
            panic!()
        };
        assert_eq!(
            pg.credential,
            Credential::RdsIam {
                db_user: "pam_ro".into()
            }
        );
        assert_eq!(pg.address, "orders.rds:5432");
        let err = to_target(&found(false, &[("pam:target", "")]), "pam:target").unwrap_err();
        assert!(err.contains("pam:secret"), "{err}");
    }

    #[test]
    fn an_instance_needs_ssm_and_a_pinned_host_key() {
        let found = |ping: Option<&str>, tags: &[(&str, &str)]| Found {
            resource: "i-1".into(),
            fallback_name: "i-1".into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            shape: Shape::Instance {
                instance_id: "i-1".into(),
                ssm_ping: ping.map(str::to_owned),
            },
        };
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        assert!(
            to_target(
                &found(None, &[("pam:target", ""), ("pam:host_key", key)]),
                "pam:target"
            )
            .unwrap_err()
            .contains("not managed by SSM")
        );
        assert!(
            to_target(&found(Some("Online"), &[("pam:target", "")]), "pam:target")
                .unwrap_err()
                .contains("host key")
        );
        let ok = to_target(
            &found(Some("Online"), &[("pam:target", ""), ("pam:host_key", key)]),
            "pam:target",
        )
        .unwrap();
        let TargetKind::Ssh(ssh) = &ok.target.kind else {
            panic!()
        };
        assert_eq!(ssh.via.as_ref().unwrap().ssm_target, "i-1");
        assert_eq!(ssh.address, "localhost:22");
    }
}
