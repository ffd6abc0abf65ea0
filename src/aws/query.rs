//! The AWS Query protocol signed by hand (SigV4, form body, XML answer) for
//! the few read calls discovery makes to RDS and EC2, whose SDK crates are
//! the largest of all (docs/aws-protocols.md 3: the broker already signs RDS
//! tokens with `aws-sigv4` alone). `Node` is a small XML tree of the answer.

use std::time::SystemTime;

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use super::Aws;
use super::error::ApiError;

/// Answers larger than this are refused (a page of 100 instances is far less).
const MAX_ANSWER: usize = 16 << 20;

/// One XML element: its local name, its text and its child elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the element at `path` (child names), if present.
    pub fn text_at(&self, path: &[&str]) -> Option<&str> {
        let mut node = self;
        for name in path {
            node = node.child(name)?;
        }
        Some(node.text.as_str())
    }

    /// Parses a whole document; the root element is returned.
    pub fn parse(text: &str) -> Result<Node, String> {
        let mut stack: Vec<Node> = Vec::new();
        let mut root = None;
        for token in xmlparser::Tokenizer::from(text) {
            let token = token.map_err(|e| format!("malformed XML: {e}"))?;
            match token {
                xmlparser::Token::ElementStart { local, .. } => {
                    if stack.len() > 64 {
                        return Err("XML nested too deeply".into());
                    }
                    stack.push(Node {
                        name: local.as_str().to_owned(),
                        ..Node::default()
                    });
                }
                xmlparser::Token::ElementEnd { end, .. } => match end {
                    xmlparser::ElementEnd::Open => {}
                    xmlparser::ElementEnd::Close(..) | xmlparser::ElementEnd::Empty => {
                        let node = stack.pop().ok_or("unbalanced XML")?;
                        match stack.last_mut() {
                            Some(parent) => parent.children.push(node),
                            None => root = Some(node),
                        }
                    }
                },
                xmlparser::Token::Text { text } | xmlparser::Token::Cdata { text, .. } => {
                    if let Some(node) = stack.last_mut() {
                        node.text.push_str(&unescape(text.as_str()));
                    }
                }
                _ => {}
            }
        }
        root.ok_or_else(|| "no XML element".into())
    }
}

/// XML's five entities and numeric character references.
fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let Some(end) = after.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = after;
            continue;
        };
        let entity = &after[..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

impl Aws {
    /// Calls `action` of a Query-protocol service (`service` is its endpoint
    /// id and signing name: `rds`, `ec2`) with `params`, signed with the
    /// broker's credentials, and returns the parsed answer. An AWS error
    /// answer becomes an [`ApiError`] with its code.
    pub async fn query(
        &self,
        service: &'static str,
        operation: &'static str,
        version: &str,
        params: &[(String, String)],
    ) -> Result<Node, ApiError> {
        let endpoint = match self.endpoint(service) {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("https://{service}.{}.amazonaws.com", self.region()),
        };
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", operation);
            form.append_pair("Version", version);
            for (key, value) in params {
                form.append_pair(key, value);
            }
            form.finish()
        };
        let provider = self.sdk().credentials_provider().ok_or_else(|| {
            ApiError::new(service, operation, None, "no AWS credentials configured")
        })?;
        let credentials = provider.provide_credentials().await.map_err(|e| {
            ApiError::new(service, operation, None, format!("no AWS credentials: {e}"))
        })?;
        let identity = credentials.into();
        let region = self.region();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| ApiError::new(service, operation, None, format!("signing: {e}")))?
            .into();
        let url = format!("{endpoint}/");
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let headers = [("content-type", content_type)];
        let signable = SignableRequest::new(
            "POST",
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| ApiError::new(service, operation, None, format!("signing: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| ApiError::new(service, operation, None, format!("signing: {e}")))?
            .into_parts();
        let mut request = http_client()
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| {
            ApiError::new(
                service,
                operation,
                None,
                format!("cannot reach the service: {e}"),
            )
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            ApiError::new(service, operation, None, format!("reading the answer: {e}"))
        })?;
        if bytes.len() > MAX_ANSWER {
            return Err(ApiError::new(
                service,
                operation,
                None,
                "the answer is too large",
            ));
        }
        let text = String::from_utf8_lossy(&bytes);
        let node = Node::parse(&text).map_err(|e| {
            ApiError::new(
                service,
                operation,
                None,
                format!("HTTP {}: {e}", status.as_u16()),
            )
        })?;
        if !status.is_success() {
            // <ErrorResponse><Error><Code/><Message/></Error></ErrorResponse> (RDS)
            // or <Response><Errors><Error><Code/>... (EC2).
            let error = node
                .child("Error")
                .or_else(|| node.child("Errors").and_then(|e| e.child("Error")));
            let code = error.and_then(|e| e.text_at(&["Code"])).map(str::to_owned);
            let message = error
                .and_then(|e| e.text_at(&["Message"]))
                .unwrap_or("the service returned an error");
            let message = match &code {
                Some(code) => format!("{code}: {message}"),
                None => format!("HTTP {}: {message}", status.as_u16()),
            };
            return Err(ApiError::new(service, operation, code, message));
        }
        Ok(node)
    }
}

/// One client for every hand-signed call (rustls on ring, like the SDK's).
fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_elements_text_and_entities() {
        let node = Node::parse(
            r#"<?xml version="1.0"?><R xmlns="x"><A><B>one &amp; two</B><B>&#x41;&lt;</B></A><C/></R>"#,
        )
        .unwrap();
        assert_eq!(node.name, "R");
        let b: Vec<&str> = node
            .child("A")
            .unwrap()
            .all("B")
            .map(|n| n.text.as_str())
            .collect();
        assert_eq!(b, ["one & two", "A<"]);
        assert_eq!(node.text_at(&["C"]), Some(""));
        assert_eq!(node.text_at(&["D"]), None);
    }

    #[test]
    fn malformed_xml_is_an_error_not_a_panic() {
        assert!(Node::parse("<a><b></a>").is_err());
        assert!(Node::parse("").is_err());
        assert!(Node::parse("<a>").is_err());
        assert_eq!(unescape("a &bogus; b &"), "a &bogus; b &");
    }
}
