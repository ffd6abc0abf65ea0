//! The broker's own AWS access: the only module that names the AWS SDK.
//!
//! Credentials come from the standard chain (environment, profile, ECS task
//! role, IMDS); endpoints honour `AWS_ENDPOINT_URL` and the per-service
//! `AWS_ENDPOINT_URL_<SERVICE>` variables, which is how tests point the
//! broker at a local emulator. Both are read from the environment map the
//! broker was started with (the process environment in production), so a
//! broker inside a test process gets its own. One HTTPS client (hyper 1 +
//! rustls with ring) serves every service. Every call retries and times out
//! as `retry.rs` says.

pub mod credentials;
pub mod ec2;
pub mod ecs;
pub mod error;
pub mod federation;
pub mod iam;
pub mod kms;
pub mod logs;
pub mod query;
pub mod rds;
pub mod rds_describe;
pub mod retry;
pub mod s3;
pub mod secrets;
pub mod ssm;
pub mod sts;

use std::collections::HashMap;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

use crate::config::AwsConfig;

/// Shared AWS configuration; clients for each service are made from it.
#[derive(Clone, Debug)]
pub struct Aws {
    sdk: SdkConfig,
    /// `AWS_ENDPOINT_URL*` settings, by service id (`""` for all services).
    endpoints: HashMap<String, String>,
}

impl Aws {
    /// Loads the standard credential chain and endpoint settings. `region`
    /// from `[aws]` wins over `AWS_REGION`; without either, us-east-1.
    pub async fn load(config: &AwsConfig, env: &HashMap<String, String>) -> Self {
        Self::load_with_env(config, env).await
    }

    /// [`Aws::load`] (kept for callers that name the environment explicitly).
    pub async fn load_with_env(config: &AwsConfig, env: &HashMap<String, String>) -> Self {
        Self::load_for(config, env, true).await
    }

    /// [`Aws::load`] for a broker of which nothing may call AWS (`used`:
    /// a target or export does): without a region from `[aws]`, the
    /// environment or the AWS profile, the instance metadata service (IMDS)
    /// is asked only when `used`, else one line says so and us-east-1
    /// stands. Credentials are always looked for at the first call only.
    pub async fn load_for(config: &AwsConfig, env: &HashMap<String, String>, used: bool) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https())
            .retry_config(retry::retry_config())
            .timeout_config(retry::timeouts());
        let mut region = config
            .region
            .clone()
            .or_else(|| env.get("AWS_REGION").cloned())
            .or_else(|| env.get("AWS_DEFAULT_REGION").cloned());
        if region.is_none() && !used {
            use aws_config::meta::region::ProvideRegion;
            let profile = aws_config::profile::ProfileFileRegionProvider::new();
            region = Some(match profile.region().await {
                Some(found) => found.to_string(),
                None => {
                    tracing::info!(
                        "AWS not configured: no region ([aws].region, AWS_REGION or a profile) \
                         and no target or export uses AWS, so IMDS is not asked"
                    );
                    "us-east-1".to_owned()
                }
            });
        }
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        // Static keys given to this broker explicitly win over the chain.
        if let (Some(id), Some(secret)) = (
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                env.get("AWS_SESSION_TOKEN").cloned(),
                None,
                "pam-environment",
            ));
        }
        // The all-services endpoint also goes into the shared config, so that
        // clients made with `Client::new(aws.sdk())` use it too.
        let global = config
            .endpoint_url
            .as_ref()
            .map(|u| u.to_string().trim_end_matches('/').to_owned())
            .or_else(|| {
                env.get("AWS_ENDPOINT_URL")
                    .filter(|v| !v.is_empty())
                    .cloned()
            });
        if let Some(url) = &global {
            loader = loader.endpoint_url(url.clone());
        }
        let mut sdk = loader.load().await;
        if sdk.region().is_none() {
            sdk = sdk.into_builder().region(Region::new("us-east-1")).build();
        }
        let mut endpoints = HashMap::new();
        for (key, value) in env {
            if value.is_empty() {
                continue;
            }
            if key == "AWS_ENDPOINT_URL" {
                endpoints.insert(String::new(), value.clone());
            } else if let Some(service) = key.strip_prefix("AWS_ENDPOINT_URL_") {
                endpoints.insert(service.to_ascii_lowercase(), value.clone());
            }
        }
        if let Some(url) = &config.endpoint_url {
            endpoints.insert(
                String::new(),
                url.to_string().trim_end_matches('/').to_owned(),
            );
        }
        Self { sdk, endpoints }
    }

    /// Uses an SDK configuration built elsewhere (tests: explicit endpoint,
    /// static credentials). The shared HTTPS client and us-east-1 are filled
    /// in when it has none.
    pub fn from_sdk(sdk: SdkConfig) -> Self {
        let needs_http = sdk.http_client().is_none();
        let needs_region = sdk.region().is_none();
        let needs_behavior = sdk.behavior_version().is_none();
        let needs_retry = sdk.retry_config().is_none();
        let needs_timeouts = sdk.timeout_config().is_none();
        let mut builder = sdk.into_builder();
        if needs_retry {
            builder = builder.retry_config(retry::retry_config());
        }
        if needs_timeouts {
            builder = builder.timeout_config(retry::timeouts());
        }
        if needs_http {
            builder = builder.http_client(https());
        }
        if needs_region {
            builder = builder.region(Region::new("us-east-1"));
        }
        if needs_behavior {
            builder = builder.behavior_version(BehaviorVersion::latest());
        }
        Self {
            sdk: builder.build(),
            endpoints: HashMap::new(),
        }
    }

    pub fn sdk(&self) -> &SdkConfig {
        &self.sdk
    }

    pub fn region(&self) -> String {
        self.sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".to_owned())
    }

    /// The endpoint override for a service (its `AWS_ENDPOINT_URL_<ID>`,
    /// else `AWS_ENDPOINT_URL`), if any.
    pub fn endpoint(&self, service: &str) -> Option<&str> {
        self.endpoints
            .get(&service.to_ascii_lowercase())
            .or_else(|| self.endpoints.get(""))
            .map(String::as_str)
    }

    pub fn secrets_manager(&self) -> aws_sdk_secretsmanager::Client {
        let mut builder = aws_sdk_secretsmanager::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("secretsmanager") {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_secretsmanager::Client::from_conf(builder.build())
    }

    /// ECS for `ExecuteCommand`, which starts a session at AWS each time it
    /// gets through: retried on throttling only.
    pub fn ecs_no_replay(&self) -> aws_sdk_ecs::Client {
        let mut builder =
            aws_sdk_ecs::config::Builder::from(&self.sdk).retry_classifier(retry::ThrottlingOnly);
        if let Some(url) = self.endpoint("ecs") {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_ecs::Client::from_conf(builder.build())
    }

    /// SSM for `StartSession` (same reason as [`Aws::ecs_no_replay`]).
    pub fn ssm_no_replay(&self) -> aws_sdk_ssm::Client {
        let mut builder =
            aws_sdk_ssm::config::Builder::from(&self.sdk).retry_classifier(retry::ThrottlingOnly);
        if let Some(url) = self.endpoint("ssm") {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_ssm::Client::from_conf(builder.build())
    }

    pub fn ecs(&self) -> aws_sdk_ecs::Client {
        let mut builder = aws_sdk_ecs::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("ecs") {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_ecs::Client::from_conf(builder.build())
    }

    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        let mut builder = aws_sdk_ssm::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("ssm") {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_ssm::Client::from_conf(builder.build())
    }

    /// IAM (a global service; `AWS_ENDPOINT_URL_IAM`).
    pub fn iam(&self) -> aws_sdk_iam::Client {
        let mut builder = aws_sdk_iam::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("iam") {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_iam::Client::from_conf(builder.build())
    }

    pub fn kms(&self) -> aws_sdk_kms::Client {
        let mut builder = aws_sdk_kms::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("kms") {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_kms::Client::from_conf(builder.build())
    }

    /// CloudWatch Logs (`AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`).
    pub fn logs(&self) -> aws_sdk_cloudwatchlogs::Client {
        let mut builder = aws_sdk_cloudwatchlogs::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("cloudwatch_logs") {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_cloudwatchlogs::Client::from_conf(builder.build())
    }

    /// S3; path-style addressing when an endpoint is overridden (emulators,
    /// VPC endpoints without bucket DNS). Checksums are the caller's
    /// (`s3::put_object` sets Content-MD5 and SHA-256), so the SDK adds none.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        let mut builder = aws_sdk_s3::config::Builder::from(&self.sdk)
            .timeout_config(retry::bulk_timeouts())
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            );
        if let Some(url) = self.endpoint("s3") {
            builder = builder.endpoint_url(url).force_path_style(true);
        }
        aws_sdk_s3::Client::from_conf(builder.build())
    }

    pub fn sts(&self) -> aws_sdk_sts::Client {
        let mut builder = aws_sdk_sts::config::Builder::from(&self.sdk);
        if let Some(url) = self.endpoint("sts") {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_sts::Client::from_conf(builder.build())
    }
}

/// The one HTTPS client: hyper 1 with rustls on ring.
fn https() -> aws_sdk_ecs::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}
