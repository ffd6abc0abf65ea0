//! The broker's own AWS access: the only module that names the AWS SDK.
//!
//! Credentials come from the standard chain (environment, profile, ECS task
//! role, IMDS); endpoints honour `AWS_ENDPOINT_URL` and the per-service
//! `AWS_ENDPOINT_URL_<SERVICE>` variables, which is how tests point the
//! broker at a local emulator. One HTTPS client (hyper 1 + rustls with ring)
//! serves every service.

pub mod rds;
pub mod secrets;

use std::collections::HashMap;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

use crate::config::AwsConfig;

/// Shared AWS configuration; clients for each service are made from it.
#[derive(Clone, Debug)]
pub struct Aws {
    sdk: SdkConfig,
}

impl Aws {
    /// Loads the standard credential chain and endpoint settings. `region`
    /// from `[aws]` wins over `AWS_REGION`; without either, us-east-1.
    pub async fn load(config: &AwsConfig) -> Self {
        Self::load_with_env(config, &HashMap::new()).await
    }

    /// Like [`Aws::load`], with `AWS_ENDPOINT_URL`, `AWS_REGION` and static
    /// keys (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`) taken from `env`, the environment the broker
    /// was started with (tests pass their own without touching the
    /// process's).
    pub async fn load_with_env(config: &AwsConfig, env: &HashMap<String, String>) -> Self {
        let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = config.region.clone().or_else(|| var("AWS_REGION")) {
            loader = loader.region(Region::new(region));
        }
        if let Some(endpoint) = var("AWS_ENDPOINT_URL") {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                id,
                secret,
                var("AWS_SESSION_TOKEN"),
                None,
                "environment",
            ));
        }
        let mut sdk = loader.load().await;
        if sdk.region().is_none() {
            sdk = sdk.into_builder().region(Region::new("us-east-1")).build();
        }
        Self { sdk }
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
}
