//! Device logins (RFC 8628) for machines without a browser: the broker
//! starts the grant at the IdP and the CLI polls it, proving with every
//! poll that it holds the key to be certified.

use serde_json::json;
use std::time::Duration;

use super::oidc::{self, DevicePoll, OidcError};
use super::{Client, DeviceOutcome, DeviceStart, Identity, LoginError, cert, unavailable};
use crate::domain::audit::now_us;
use crate::domain::principal::LoginMethod;
use crate::store;

impl Identity {
    pub async fn device_start(&self, client: &Client) -> Result<DeviceStart, LoginError> {
        let oidc = self.oidc()?;
        self.check_ip_lock(client).await?;
        let grant = match oidc.device_authorize().await {
            Ok(grant) => grant,
            Err(e @ OidcError::Unreachable(_)) => {
                return Err(self.idp_outage(client, LoginMethod::Device, &e).await);
            }
            Err(e) => return Err(LoginError::unavailable(e)),
        };
        let interval = grant.interval.unwrap_or(DEFAULT_DEVICE_INTERVAL).max(1);
        let request_id = oidc::random_token(24);
        let now = now_us();
        let ttl = Duration::from_secs(grant.expires_in.clamp(60, 1800));
        store::identity::insert_login_request(
            &self.inner.db,
            &store::identity::LoginRequest {
                id: request_id.clone(),
                kind: "device".into(),
                device_code: Some(grant.device_code.clone()),
                interval_secs: Some(interval as i64),
                next_poll_at: Some(now),
                source_ip: client.ip.map(|ip| ip.to_string()),
                user_agent: client.user_agent.clone(),
                created_at: now,
                expires_at: now + ttl.as_micros() as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(unavailable)?;
        Ok(DeviceStart {
            request_id,
            user_code: grant.user_code,
            verification_uri: grant.verification_uri,
            verification_uri_complete: grant.verification_uri_complete,
            interval,
            expires_in: ttl.as_secs(),
        })
    }

    pub async fn device_poll(
        &self,
        request_id: &str,
        public_key: &str,
        proof: &str,
        client: &Client,
    ) -> Result<DeviceOutcome, LoginError> {
        let oidc = self.oidc()?;
        let request = store::identity::get_login_request(&self.inner.db, request_id)
            .await
            .map_err(unavailable)?
            .filter(|r| r.kind == "device");
        let Some(request) = request else {
            return Err(LoginError::BadRequest("unknown device login".into()));
        };
        let now = now_us();
        if request.used_at.is_some() || request.expires_at <= now {
            return Err(LoginError::Refused(
                "the device login has expired or was used; start again".into(),
            ));
        }
        let key = cert::verify_proof(public_key, request_id, proof).map_err(|reason| {
            LoginError::BadRequest(format!("proof of possession failed: {reason}"))
        })?;
        let interval = request
            .interval_secs
            .unwrap_or(DEFAULT_DEVICE_INTERVAL as i64)
            .max(1);
        if request
            .next_poll_at
            .is_some_and(|next| now < next - 200_000)
        {
            // Polled faster than the interval: RFC 8628 says slow down.
            let interval = interval + 5;
            store::identity::set_next_poll(
                &self.inner.db,
                request_id,
                now + interval * 1_000_000,
                interval,
            )
            .await
            .map_err(unavailable)?;
            return Ok(DeviceOutcome::SlowDown {
                interval: interval as u64,
            });
        }
        let device_code = request.device_code.clone().unwrap_or_default();
        match oidc.device_poll(&device_code).await {
            Ok(DevicePoll::Pending) => {
                store::identity::set_next_poll(
                    &self.inner.db,
                    request_id,
                    now + interval * 1_000_000,
                    interval,
                )
                .await
                .map_err(unavailable)?;
                Ok(DeviceOutcome::Pending {
                    interval: interval as u64,
                })
            }
            Ok(DevicePoll::SlowDown) => {
                let interval = interval + 5;
                store::identity::set_next_poll(
                    &self.inner.db,
                    request_id,
                    now + interval * 1_000_000,
                    interval,
                )
                .await
                .map_err(unavailable)?;
                Ok(DeviceOutcome::SlowDown {
                    interval: interval as u64,
                })
            }
            Ok(DevicePoll::Done(identity)) => {
                if !store::identity::use_login_request(&self.inner.db, request_id, now)
                    .await
                    .map_err(unavailable)?
                {
                    return Err(self
                        .refuse(
                            Some(&identity),
                            client,
                            LoginMethod::Device,
                            "replayed device login",
                            json!({}),
                        )
                        .await);
                }
                let identity = self
                    .admit(Ok(identity), client, LoginMethod::Device)
                    .await?;
                let response = self.open_session(identity, &key, client, json!({})).await?;
                Ok(DeviceOutcome::Done(Box::new(response)))
            }
            Err(e @ OidcError::Unreachable(_)) => Err(LoginError::unavailable(super::IdpOutage(e))),
            Err(e) => {
                let _ = store::identity::use_login_request(&self.inner.db, request_id, now).await;
                Err(self
                    .admit(Err(e), client, LoginMethod::Device)
                    .await
                    .err()
                    .unwrap_or_else(|| LoginError::Refused("device login refused".into())))
            }
        }
    }
}

const DEFAULT_DEVICE_INTERVAL: u64 = 5;
