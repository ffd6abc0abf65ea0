//! S3 for the SIEM export: one `PutObject` per exported batch, with
//! `Content-MD5` and a SHA-256 checksum (S3 checks both; Object Lock
//! requires one of them on buckets with default retention, which then
//! applies to the object).

use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest as _, Md5};
use sha2::Sha256;

use crate::aws::Aws;
use crate::aws::error::{ApiError, from_sdk};

const SERVICE: &str = "s3";

/// What S3 answered for a stored object.
#[derive(Debug, Clone)]
pub struct Stored {
    pub version_id: Option<String>,
}

/// Stores `body` at `bucket`/`key` with the given user metadata.
pub async fn put_object(
    aws: &Aws,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
    content_type: &str,
    metadata: &[(&str, String)],
) -> Result<Stored, ApiError> {
    let md5 = STANDARD.encode(Md5::digest(&body));
    let sha256 = STANDARD.encode(<Sha256 as sha2::Digest>::digest(&body));
    let mut request = aws
        .s3()
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .content_md5(md5)
        .checksum_sha256(sha256)
        .body(ByteStream::from(body));
    for (name, value) in metadata {
        request = request.metadata(*name, value.clone());
    }
    let output = request
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "PutObject", e))?;
    Ok(Stored {
        version_id: output.version_id().map(str::to_owned),
    })
}
