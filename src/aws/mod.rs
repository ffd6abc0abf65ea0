//! The broker's own AWS access: the only module that names the AWS SDK.
//!
//! Credentials come from the standard chain (environment, profile, ECS task
//! role, IMDS); endpoints honour `AWS_ENDPOINT_URL` and the per-service
//! `AWS_ENDPOINT_URL_<SERVICE>` variables, which is how tests point the
//! broker at a local emulator. One HTTPS client (hyper 1 + rustls with ring)
//! serves every service.

pub mod ecs;
pub mod error;
pub mod kms;
pub mod ssm;

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
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let mut sdk = loader.load().await;
        if sdk.region().is_none() {
            sdk = sdk.into_builder().region(Region::new("us-east-1")).build();
        }
        Self { sdk }
    }

    /// Uses an SDK configuration built elsewhere (tests: explicit endpoint,
    /// static credentials). The shared HTTPS client and us-east-1 are filled
    /// in when it has none.
    pub fn from_sdk(sdk: SdkConfig) -> Self {
        let needs_http = sdk.http_client().is_none();
        let needs_region = sdk.region().is_none();
        let needs_behavior = sdk.behavior_version().is_none();
        let mut builder = sdk.into_builder();
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
}

/// The one HTTPS client: hyper 1 with rustls on ring.
fn https() -> aws_sdk_ecs::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}
