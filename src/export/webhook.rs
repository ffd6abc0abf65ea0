//! The webhook sink: HTTPS POST of JSON lines, signed.
//!
//! Each request carries
//! - `X-Pam-Timestamp`: Unix seconds when the request was signed;
//! - `X-Pam-Signature: sha256=<hex>`: HMAC-SHA256 with the sink's secret
//!   over `<timestamp>.<body>`. Receivers recompute it, compare in constant
//!   time, and refuse timestamps more than a few minutes off (replay);
//! - `X-Pam-Sink`, `X-Pam-First-Seq`, `X-Pam-Last-Seq` and an
//!   `Idempotency-Key` (`<sink>:<first>-<last>`): a retried request carries
//!   the same events, and every line its `seq`.
//!
//! Any 2xx acknowledges the whole body. 413 halves the batch and retries;
//! anything else is retried later with backoff.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};

use super::{Delivery, Line};
use crate::config::WebhookSink;

pub const SIGNATURE_HEADER: &str = "x-pam-signature";
pub const TIMESTAMP_HEADER: &str = "x-pam-timestamp";

pub struct Webhook {
    name: String,
    url: url::Url,
    secret: SecretString,
    /// Extra headers (values from the environment; secrets).
    headers: Vec<(reqwest::header::HeaderName, SecretString)>,
    client: reqwest::Client,
    /// Lines per request; halved when the receiver says 413.
    chunk: usize,
}

impl Webhook {
    pub fn new(
        name: &str,
        config: &WebhookSink,
        env: &HashMap<String, String>,
    ) -> anyhow::Result<Webhook> {
        let secret = env
            .get(&config.secret_env)
            .filter(|v| !v.is_empty())
            .map(|v| SecretString::from(v.clone()))
            .with_context(|| {
                format!(
                    "secret_env: the environment variable {} is not set",
                    config.secret_env
                )
            })?;
        let mut headers = Vec::new();
        for (header, var) in &config.headers_env {
            let name = reqwest::header::HeaderName::from_bytes(header.as_bytes())
                .with_context(|| format!("headers_env: {header:?} is not a header name"))?;
            let value = env.get(var).filter(|v| !v.is_empty()).with_context(|| {
                format!("headers_env.{header}: the environment variable {var} is not set")
            })?;
            reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                anyhow::anyhow!(
                    "headers_env.{header}: the value of {var} is not a valid header value"
                )
            })?;
            headers.push((name, SecretString::from(value.clone())));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(config.timeout.0)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("ca_file: reading {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("ca_file: {} holds no PEM certificate", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("ca_file: {} holds no PEM certificate", path.display());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Webhook {
            name: name.to_owned(),
            url: config.url.clone(),
            secret,
            headers,
            client: builder.build().context("building the HTTPS client")?,
            chunk: usize::MAX,
        })
    }

    pub async fn deliver(&mut self, lines: &[Line]) -> Delivery {
        let mut delivered = 0;
        while delivered < lines.len() {
            let end = lines.len().min(delivered.saturating_add(self.chunk));
            let part = &lines[delivered..end];
            match self.post(part).await {
                Ok(()) => delivered = end,
                Err(Post::TooLarge) if part.len() > 1 => {
                    self.chunk = (part.len() / 2).max(1);
                    tracing::info!(sink = %self.name, lines = self.chunk, "export: receiver wants smaller batches");
                }
                Err(Post::TooLarge) => {
                    return Delivery::failed(
                        delivered,
                        format!(
                            "HTTP 413: the receiver refuses the single event at seq {}",
                            part[0].seq
                        ),
                    );
                }
                Err(Post::Failed(error)) => return Delivery::failed(delivered, error),
            }
        }
        Delivery::all(lines)
    }

    async fn post(&self, lines: &[Line]) -> Result<(), Post> {
        let mut body = String::with_capacity(lines.iter().map(|l| l.text.len() + 1).sum());
        for line in lines {
            body.push_str(&line.text);
            body.push('\n');
        }
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let signature = sign(
            self.secret.expose_secret().as_bytes(),
            &timestamp,
            body.as_bytes(),
        );
        let first = lines.first().map_or(0, |l| l.seq);
        let last = lines.last().map_or(0, |l| l.seq);
        let mut request = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/x-ndjson")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, format!("sha256={signature}"))
            .header("x-pam-sink", &self.name)
            .header("x-pam-first-seq", first.to_string())
            .header("x-pam-last-seq", last.to_string())
            .header("idempotency-key", format!("{}:{first}-{last}", self.name));
        for (name, value) in &self.headers {
            let mut value = reqwest::header::HeaderValue::from_str(value.expose_secret())
                .map_err(|_| Post::Failed("invalid header value".into()))?;
            value.set_sensitive(true);
            request = request.header(name.clone(), value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| Post::Failed(describe(e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            Err(Post::TooLarge)
        } else {
            Err(Post::Failed(format!("the receiver answered HTTP {status}")))
        }
    }
}

enum Post {
    TooLarge,
    Failed(String),
}

/// `hex(HMAC-SHA256(secret, timestamp + "." + body))`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.as_bytes());
    context.update(b".");
    context.update(body);
    hex::encode(context.sign().as_ref())
}

/// A transport error without the URL (it may carry an API key in its query).
fn describe(error: reqwest::Error) -> String {
    use std::error::Error as _;
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        // RFC 4231 style check against ring's own verification.
        let sig = sign(b"secret", "1700000000", b"{\"seq\":1}\n");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        assert!(
            hmac::verify(
                &key,
                b"1700000000.{\"seq\":1}\n",
                &hex::decode(&sig).unwrap()
            )
            .is_ok()
        );
        assert_ne!(sig, sign(b"secret", "1700000001", b"{\"seq\":1}\n"));
        assert_ne!(sig, sign(b"secret", "1700000000", b"{\"seq\":2}\n"));
        assert_ne!(sig, sign(b"other", "1700000000", b"{\"seq\":1}\n"));
    }
}
