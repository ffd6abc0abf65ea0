//! The CLI's HTTP client for the broker API: JSON in and out, the broker's
//! error message turned into one line.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::home::Home;
use crate::api::ErrorBody;

pub struct Broker {
    pub url: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// A response the caller wants to look at itself (device polling).
pub struct Raw {
    pub status: reqwest::StatusCode,
    pub body: bytes::Bytes,
}

impl Broker {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let url = normalize(url)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("pam-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            url,
            http,
            token: None,
        })
    }

    /// The broker the user logged in to, with their token.
    pub fn from_home(home: &Home, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let saved = home.saved();
        let url = env
            .get("PAM_BROKER")
            .cloned()
            .or(saved.broker)
            .context("no broker known; run `pam login --broker URL`")?;
        let mut broker = Self::new(&url)?;
        broker.token = home.token();
        if broker.token.is_none() {
            bail!("not logged in; run `pam login`");
        }
        Ok(broker)
    }

    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let request = self.authorize(self.http.get(self.endpoint(path)));
        decode(
            path,
            request.send().await.with_context(|| self.unreachable())?,
        )
        .await
    }

    /// GET with a long timeout, for work that walks the whole trail.
    pub async fn get_slow<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let request = self
            .authorize(self.http.get(self.endpoint(path)))
            .timeout(Duration::from_secs(4 * 3600));
        decode(
            path,
            request.send().await.with_context(|| self.unreachable())?,
        )
        .await
    }

    /// GET a non-JSON body (recordings, exports) as bytes.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<bytes::Bytes> {
        let request = self.authorize(self.http.get(self.endpoint(path)));
        let response = request.send().await.with_context(|| self.unreachable())?;
        let status = response.status();
        let body = response.bytes().await.with_context(|| self.unreachable())?;
        if !status.is_success() {
            bail!("{}", error_message(status, &body));
        }
        Ok(body)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let request = self.authorize(self.http.post(self.endpoint(path)).json(body));
        decode(
            path,
            request.send().await.with_context(|| self.unreachable())?,
        )
        .await
    }

    /// POST and hand back status and body as they are.
    pub async fn post_raw<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<Raw> {
        let request = self.authorize(self.http.post(self.endpoint(path)).json(body));
        let response = request.send().await.with_context(|| self.unreachable())?;
        let status = response.status();
        let body = response.bytes().await.with_context(|| self.unreachable())?;
        Ok(Raw { status, body })
    }

    /// POST without a response body (204).
    pub async fn post_empty<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        let raw = self.post_raw(path, body).await?;
        if raw.status.is_success() {
            Ok(())
        } else {
            bail!("{}", error_message(raw.status, &raw.body))
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn unreachable(&self) -> String {
        format!("the broker at {} is unreachable", self.url)
    }
}

async fn decode<T: DeserializeOwned>(path: &str, response: reqwest::Response) -> anyhow::Result<T> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .context("reading the broker's answer")?;
    if !status.is_success() {
        bail!("{}", error_message(status, &body));
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("unexpected answer from the broker to {path}"))
}

/// The broker's error text, or the HTTP status when there is none.
pub fn error_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => error.error,
        Err(_) => format!("the broker answered HTTP {status}"),
    }
}

fn normalize(url: &str) -> anyhow::Result<String> {
    let with_scheme = if url.contains("://") {
        url.to_owned()
    } else {
        format!("https://{url}")
    };
    let parsed =
        url::Url::parse(&with_scheme).with_context(|| format!("invalid broker URL {url:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("the broker URL must be http(s)://, got {url:?}");
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}
