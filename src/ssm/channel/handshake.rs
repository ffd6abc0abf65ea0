//! The agent's handshake (docs/aws-protocols.md 1.6, 1.11): the session
//! type, KMS encryption with its challenge, and the moment the session opens.

use std::sync::Arc;

use base64::Engine as _;

use super::{Engine, Phase, Ready};
use crate::ssm::codec::{
    self, ActionStatus, ClientMessage, EncryptionChallenge, HandshakeComplete, HandshakeRequest,
    HandshakeResponse, KmsEncryptionRequest, KmsEncryptionResponse, PayloadType,
    ProcessedClientAction, SessionTypeRequest,
};
use crate::ssm::crypto::{Cipher, DataKeyRequest};
use crate::ssm::{EncryptionError, Error, Info, SessionType};

impl Engine {
    pub(super) async fn on_handshake_request(&mut self, message: &ClientMessage) {
        let request: HandshakeRequest = match message.json("handshake request") {
            Ok(request) => request,
            Err(e) => return self.fail(Error::HandshakeMessage(e)),
        };
        let mut actions = Vec::new();
        let mut errors = Vec::new();
        let mut failure = None;
        let mut session_type = None;
        let mut properties = serde_json::Value::Null;
        let mut kms_key_id = None;
        for action in &request.requested_client_actions {
            let mut processed = ProcessedClientAction {
                action_type: action.action_type.clone(),
                action_status: ActionStatus::Success,
                action_result: serde_json::Value::Null,
                error: String::new(),
            };
            let outcome = match action.action_type.as_str() {
                "SessionType" => {
                    self.session_type_action(&action.action_parameters)
                        .map(|(kind, props)| {
                            session_type = Some(kind);
                            properties = props;
                            serde_json::Value::Null
                        })
                }
                "KMSEncryption" => {
                    self.kms_action(&action.action_parameters)
                        .await
                        .map(|(key_id, blob)| {
                            kms_key_id = Some(key_id);
                            serde_json::to_value(KmsEncryptionResponse {
                                kms_cipher_text_key: base64::engine::general_purpose::STANDARD
                                    .encode(blob),
                            })
                            .expect("a KMS response serializes")
                        })
                }
                other => {
                    processed.action_status = ActionStatus::Unsupported;
                    processed.error = format!("Unsupported action {other}");
                    errors.push(processed.error.clone());
                    actions.push(processed);
                    continue;
                }
            };
            match outcome {
                Ok(result) => processed.action_result = result,
                Err(e) => {
                    processed.action_status = ActionStatus::Failed;
                    processed.error =
                        format!("Failed to process action {}: {e}", action.action_type);
                    errors.push(processed.error.clone());
                    failure.get_or_insert(e);
                }
            }
            actions.push(processed);
        }
        let response = HandshakeResponse {
            client_version: self.options.client_version.clone(),
            processed_client_actions: actions,
            errors: Some(errors).filter(|e| !e.is_empty()),
        };
        let payload = serde_json::to_vec(&response).expect("a handshake response serializes");
        let frame = crate::ssm::stream_frame(PayloadType::HandshakeResponse, &[&payload]);
        // The agent learns why before we give up.
        self.send_stream(frame).await;
        if let Some(e) = failure {
            return self.fail(e);
        }
        if let Phase::Handshake {
            agent_version,
            session_type: kind,
            properties: props,
            kms_key_id: key,
            ..
        } = &mut self.phase
        {
            *agent_version = Some(request.agent_version);
            *kind = session_type;
            *props = properties;
            *key = kms_key_id;
        }
    }

    pub(super) fn session_type_action(
        &self,
        parameters: &serde_json::Value,
    ) -> Result<(SessionType, serde_json::Value), Error> {
        let request: SessionTypeRequest =
            serde_json::from_value(parameters.clone()).map_err(|source| Error::HandshakeJson {
                what: "session type",
                source,
            })?;
        let kind = SessionType::parse(&request.session_type)
            .ok_or_else(|| Error::SessionType(request.session_type.clone()))?;
        Ok((kind, request.properties))
    }

    pub(super) async fn kms_action(
        &mut self,
        parameters: &serde_json::Value,
    ) -> Result<(String, Vec<u8>), Error> {
        let request: KmsEncryptionRequest =
            serde_json::from_value(parameters.clone()).map_err(|source| Error::HandshakeJson {
                what: "KMS encryption",
                source,
            })?;
        let Some(keys) = self.options.data_keys.clone() else {
            return Err(Error::Encryption(EncryptionError::NotConfigured));
        };
        let key = keys
            .generate(DataKeyRequest {
                key_id: &request.kms_key_id,
                session_id: &self.options.session_id,
                target_id: &self.options.target_id,
            })
            .await
            .map_err(|e| Error::Encryption(EncryptionError::DataKey(e)))?;
        let cipher = Cipher::client(&key.plaintext).map_err(|e| Error::Encryption(e.into()))?;
        self.cipher = Some(Arc::new(cipher));
        Ok((request.kms_key_id, key.ciphertext_blob))
    }

    pub(super) async fn on_challenge(&mut self, message: &ClientMessage) {
        let result = (|| {
            let cipher = self
                .cipher
                .clone()
                .ok_or(Error::Encryption(EncryptionError::NoDataKey))?;
            let request: EncryptionChallenge = message.json("encryption challenge")?;
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(&request.challenge)
                .map_err(|e| Error::Encryption(EncryptionError::ChallengeEncoding(e)))?;
            let challenge = cipher
                .open(&sealed)
                .map_err(|e| Error::Encryption(EncryptionError::Challenge(e)))?;
            let answer = cipher
                .seal(&[&challenge])
                .map_err(|e| Error::Encryption(e.into()))?;
            let response = EncryptionChallenge {
                challenge: base64::engine::general_purpose::STANDARD.encode(answer),
            };
            Ok::<_, Error>(serde_json::to_vec(&response).expect("a challenge serializes"))
        })();
        match result {
            Ok(payload) => {
                let frame =
                    crate::ssm::stream_frame(PayloadType::EncChallengeResponse, &[&payload]);
                self.send_stream(frame).await;
            }
            Err(e) => self.fail(e),
        }
    }

    pub(super) async fn on_handshake_complete(&mut self, message: &ClientMessage) {
        let complete: HandshakeComplete = message.json("handshake complete").unwrap_or_default();
        let Phase::Handshake {
            ready,
            agent_version,
            session_type,
            properties,
            kms_key_id,
        } = std::mem::replace(&mut self.phase, Phase::Open)
        else {
            return;
        };
        let Some(session_type) = session_type else {
            return self.fail(Error::Handshake(
                "the handshake completed without a session type".to_owned(),
            ));
        };
        let info = Info {
            session_id: self.options.session_id.clone(),
            agent_version,
            session_type,
            properties,
            kms_key_id,
            customer_message: Some(complete.customer_message).filter(|m| !m.is_empty()),
        };
        self.opened(info, ready).await;
    }

    /// Agents older than the handshake start with output: that is a shell.
    pub(super) async fn legacy_handshake(&mut self) {
        let Phase::Handshake {
            agent_version: None,
            ..
        } = &self.phase
        else {
            return;
        };
        let Phase::Handshake { ready, .. } = std::mem::replace(&mut self.phase, Phase::Open) else {
            return;
        };
        let info = Info {
            session_id: self.options.session_id.clone(),
            agent_version: None,
            session_type: SessionType::StandardStream,
            properties: serde_json::Value::Null,
            kms_key_id: None,
            customer_message: None,
        };
        self.opened(info, ready).await;
    }

    pub(super) async fn opened(&mut self, info: Info, ready: Option<Ready>) {
        if info.session_type.is_shell()
            && let Some((cols, rows)) = self.options.initial_size
        {
            let payload =
                serde_json::to_vec(&codec::SizeData { cols, rows }).expect("a size serializes");
            let frame = crate::ssm::stream_frame(PayloadType::Size, &[&payload]);
            self.send_stream(frame).await;
        }
        if let Some(ready) = ready {
            let _ = ready.send(Ok((info, self.cipher.clone())));
        }
    }
}
