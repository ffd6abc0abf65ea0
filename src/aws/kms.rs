//! KMS data keys for end-to-end encrypted Session Manager data channels.

use std::fmt;

use secrecy::SecretSlice;

use crate::aws::Aws;
use crate::aws::error::{ApiError, from_sdk};

/// A data key: the plaintext (secret, zeroed on drop) and the blob only KMS
/// can decrypt.
pub struct DataKey {
    pub plaintext: SecretSlice<u8>,
    pub ciphertext_blob: Vec<u8>,
}

const SERVICE: &str = "kms";

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &"[redacted]")
            .field("ciphertext_blob_len", &self.ciphertext_blob.len())
            .finish()
    }
}

/// `GenerateDataKey` of `bytes` bytes under `key_id`, bound to `context`.
pub async fn generate_data_key(
    aws: &Aws,
    key_id: &str,
    bytes: i32,
    context: &[(&str, &str)],
) -> Result<DataKey, ApiError> {
    let client = aws.kms();
    let mut request = client
        .generate_data_key()
        .key_id(key_id)
        .number_of_bytes(bytes);
    for (name, value) in context {
        request = request.encryption_context(*name, *value);
    }
    let mut output = request
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "GenerateDataKey", e))?;
    let plaintext = output
        .plaintext
        .take()
        .ok_or_else(|| ApiError::missing(SERVICE, "GenerateDataKey", "plaintext"))?
        .into_inner();
    let ciphertext_blob = output
        .ciphertext_blob
        .take()
        .ok_or_else(|| ApiError::missing(SERVICE, "GenerateDataKey", "ciphertext blob"))?
        .into_inner();
    Ok(DataKey {
        plaintext: SecretSlice::from(plaintext),
        ciphertext_blob,
    })
}
