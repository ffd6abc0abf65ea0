//! What data channel messages carry (docs/aws-protocols.md 1.4–1.6): the
//! JSON payloads, flags and exit codes.

use serde::{Deserialize, Serialize};

use super::Error;

/// The payload of a [`PayloadType::Flag`](super::PayloadType::Flag) message: a 4-byte big-endian u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Client: the local TCP connection closed (basic port forwarding).
    DisconnectToPort,
    /// Client: end the session (agent > 2.3.722.0).
    TerminateSession,
    /// Agent: it could not connect to the destination port.
    ConnectToPortError,
    Other(u32),
}

impl Flag {
    /// The 4-byte payload of a Flag message.
    pub fn to_payload(self) -> [u8; 4] {
        u32::from(self).to_be_bytes()
    }

    /// Parses a Flag payload; anything but exactly 4 bytes is an error.
    pub fn from_payload(payload: &[u8]) -> Result<Flag, Error> {
        let bytes: [u8; 4] = payload.try_into().map_err(|_| Error::Payload {
            what: "flag",
            reason: format!("expected 4 bytes, got {}", payload.len()),
        })?;
        Ok(Flag::from(u32::from_be_bytes(bytes)))
    }
}

impl From<u32> for Flag {
    fn from(value: u32) -> Self {
        match value {
            1 => Flag::DisconnectToPort,
            2 => Flag::TerminateSession,
            3 => Flag::ConnectToPortError,
            other => Flag::Other(other),
        }
    }
}

impl From<Flag> for u32 {
    fn from(value: Flag) -> Self {
        match value {
            Flag::DisconnectToPort => 1,
            Flag::TerminateSession => 2,
            Flag::ConnectToPortError => 3,
            Flag::Other(other) => other,
        }
    }
}

/// Parses an ExitCode payload. The agent sends `EXIT_CODE: <n>` as text;
/// a bare number and a 4-byte big-endian integer are accepted too.
pub fn parse_exit_code(payload: &[u8]) -> Result<i32, Error> {
    let text = std::str::from_utf8(payload).ok().map(|text| {
        let text = text.trim();
        text.strip_prefix("EXIT_CODE:").unwrap_or(text).trim()
    });
    if let Some(code) = text.and_then(|text| text.parse::<i32>().ok()) {
        return Ok(code);
    }
    if let Ok(bytes) = <[u8; 4]>::try_from(payload) {
        return Ok(i32::from_be_bytes(bytes));
    }
    Err(Error::Payload {
        what: "exit code",
        reason: format!("unrecognised {} bytes", payload.len()),
    })
}

// --- JSON payloads (Go struct field names, in Go's field order) ---

/// The first frame of every connection (text, JSON).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenDataChannelInput<'a> {
    pub message_schema_version: &'a str,
    pub request_id: String,
    pub token_value: &'a str,
    pub client_id: String,
    pub client_version: &'a str,
}

/// Payload of an `acknowledge` message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcknowledgeContent {
    #[serde(rename = "AcknowledgedMessageType")]
    pub acknowledged_message_type: String,
    #[serde(rename = "AcknowledgedMessageId")]
    pub acknowledged_message_id: String,
    #[serde(rename = "AcknowledgedMessageSequenceNumber")]
    pub acknowledged_message_sequence_number: i64,
    #[serde(rename = "IsSequentialMessage", default)]
    pub is_sequential_message: bool,
}

/// Payload of a `channel_closed` message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ChannelClosed {
    pub message_id: String,
    pub created_date: String,
    pub destination_id: String,
    pub session_id: String,
    pub message_type: String,
    pub schema_version: i64,
    pub output: String,
}

/// HandshakeRequest (agent → client, payload type 5).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeRequest {
    pub agent_version: String,
    pub requested_client_actions: Vec<RequestedClientAction>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestedClientAction {
    pub action_type: String,
    pub action_parameters: serde_json::Value,
}

/// `ActionParameters` of the SessionType action.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionTypeRequest {
    pub session_type: String,
    pub properties: serde_json::Value,
}

/// `ActionParameters` of the KMSEncryption action.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct KmsEncryptionRequest {
    #[serde(rename = "KMSKeyId")]
    pub kms_key_id: String,
}

/// `ActionResult` of a successful KMSEncryption action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KmsEncryptionResponse {
    /// Base64 of the KMS CiphertextBlob.
    #[serde(rename = "KMSCipherTextKey")]
    pub kms_cipher_text_key: String,
}

/// HandshakeResponse (client → agent, payload type 6).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeResponse {
    pub client_version: String,
    pub processed_client_actions: Vec<ProcessedClientAction>,
    pub errors: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessedClientAction {
    pub action_type: String,
    pub action_status: ActionStatus,
    pub action_result: serde_json::Value,
    pub error: String,
}

/// `ActionStatus` of a processed action: 1 Success, 2 Failed, 3 Unsupported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub enum ActionStatus {
    Success,
    Failed,
    Unsupported,
    Other(i64),
}

/// HandshakeComplete (agent → client, payload type 7).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeComplete {
    /// A Go `time.Duration`: nanoseconds.
    pub handshake_time_to_complete: i64,
    pub customer_message: String,
}

/// EncChallengeRequest / EncChallengeResponse (payload types 8 and 9).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptionChallenge {
    /// Base64 of nonce ‖ ciphertext ‖ tag.
    #[serde(rename = "Challenge")]
    pub challenge: String,
}

/// Size (client → agent, payload type 3).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SizeData {
    pub cols: u32,
    pub rows: u32,
}

impl From<i64> for ActionStatus {
    fn from(value: i64) -> Self {
        match value {
            1 => ActionStatus::Success,
            2 => ActionStatus::Failed,
            3 => ActionStatus::Unsupported,
            other => ActionStatus::Other(other),
        }
    }
}

impl From<ActionStatus> for i64 {
    fn from(value: ActionStatus) -> Self {
        match value {
            ActionStatus::Success => 1,
            ActionStatus::Failed => 2,
            ActionStatus::Unsupported => 3,
            ActionStatus::Other(other) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_exit_codes_parse() {
        assert_eq!(Flag::TerminateSession.to_payload(), [0, 0, 0, 2]);
        assert_eq!(
            Flag::from_payload(&[0, 0, 0, 1]),
            Ok(Flag::DisconnectToPort)
        );
        assert_eq!(
            Flag::from_payload(&[0, 0, 0, 3]),
            Ok(Flag::ConnectToPortError)
        );
        assert!(Flag::from_payload(&[0, 0, 1]).is_err());
        assert_eq!(parse_exit_code(b"EXIT_CODE: 3"), Ok(3));
        assert_eq!(parse_exit_code(b"EXIT_CODE: -1\n"), Ok(-1));
        assert_eq!(parse_exit_code(b"127"), Ok(127));
        assert_eq!(parse_exit_code(&[0, 0, 0, 5]), Ok(5));
        assert!(parse_exit_code(b"EXIT_CODE: x").is_err());
    }

    #[test]
    fn json_payloads_match_the_plugin() {
        let response = HandshakeResponse {
            client_version: "1.2.0.0".into(),
            processed_client_actions: vec![ProcessedClientAction {
                action_type: "SessionType".into(),
                action_status: ActionStatus::Success,
                action_result: serde_json::Value::Null,
                error: String::new(),
            }],
            errors: None,
        };
        // docs/aws-protocols.md 1.6, verified on the wire.
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#
        );
        let request: HandshakeRequest = serde_json::from_str(
            r#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[
                {"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":null}},
                {"ActionType":"KMSEncryption","ActionParameters":{"KMSKeyId":"arn:aws:kms:k"}}]}"#,
        )
        .unwrap();
        assert_eq!(request.agent_version, "3.3.987.0");
        let kms: KmsEncryptionRequest = serde_json::from_value(
            request.requested_client_actions[1]
                .action_parameters
                .clone(),
        )
        .unwrap();
        assert_eq!(kms.kms_key_id, "arn:aws:kms:k");
        let complete: HandshakeComplete = serde_json::from_str(
            r#"{"HandshakeTimeToComplete":1500000,"CustomerMessage":"hello"}"#,
        )
        .unwrap();
        assert_eq!(complete.customer_message, "hello");
        let closed: ChannelClosed =
            serde_json::from_str(r#"{"SessionId":"s-1","Output":"bye","SchemaVersion":1}"#)
                .unwrap();
        assert_eq!(closed.output, "bye");
        let open = OpenDataChannelInput {
            message_schema_version: "1.0",
            request_id: "r".into(),
            token_value: "tok-123",
            client_id: "c".into(),
            client_version: "1.2.0.0",
        };
        assert_eq!(
            serde_json::to_string(&open).unwrap(),
            r#"{"MessageSchemaVersion":"1.0","RequestId":"r","TokenValue":"tok-123","ClientId":"c","ClientVersion":"1.2.0.0"}"#
        );
        assert_eq!(
            serde_json::to_string(&SizeData {
                cols: 300,
                rows: 100
            })
            .unwrap(),
            r#"{"cols":300,"rows":100}"#
        );
    }
}
