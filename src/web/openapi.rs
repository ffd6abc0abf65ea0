//! `GET /openapi.json`: the OpenAPI 3.1 description of the JSON API the CLI
//! and the web view use. Written by hand next to the routes it describes;
//! the schemathesis run in the test suite holds the two together.

use axum::Json;
use serde_json::{Value, json};

fn filters() -> Vec<Value> {
    let text = |name: &str, about: &str| {
        json!({"name": name, "in": "query", "required": false, "description": about,
               "schema": {"type": "string", "maxLength": 256}})
    };
    vec![
        text("user", "only this user (email)"),
        text("outcome", "success, failure or denied"),
        text("ip", "only this source IP"),
        text("kind", "only this event kind, e.g. login.failure"),
        text("target", "only this target"),
        text("session", "only this session id"),
        text(
            "since",
            "at or after: RFC 3339, YYYY-MM-DD, or an age like 7d",
        ),
        text("until", "before: RFC 3339, YYYY-MM-DD, or an age"),
        text("before", "keyset cursor: next_before of the previous page"),
        json!({"name": "limit", "in": "query", "required": false,
               "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}),
    ]
}

fn error() -> Value {
    json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok_json(schema: Value) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
}

fn secured(mut op: Value) -> Value {
    op["security"] = json!([{"bearer": []}]);
    let responses = op["responses"].as_object_mut().map(|r| {
        r.entry("401").or_insert_with(error);
        r.entry("403").or_insert_with(error);
    });
    let _ = responses;
    op
}

/// The document, built once per request (it is small).
pub fn spec() -> Value {
    let events = json!({"type": "object", "required": ["events"], "properties": {
        "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
        "next_before": {"type": ["string", "null"]}}});
    let session_id = json!({"name": "id", "in": "path", "required": true,
        "schema": {"type": "string", "maxLength": 64}});
    let text = |about: &str| json!({"description": about, "content": {"text/plain": {"schema": {"type": "string"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pam broker API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The JSON API of the pam broker: login, targets, AWS credentials, sessions and the audit trail. Audit reads need the view_audit permission and are themselves audited."
        },
        "paths": {
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": text("ok")}}},
            "/readyz": {"get": {"summary": "readiness (the store answers)",
                "responses": {"200": text("ready"), "503": text("store unreachable")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": text("metrics")}}},
            "/.well-known/jwks.json": {"get": {"summary": "the broker's token-signing keys",
                "responses": {"200": ok_json(json!({"type": "object"}))}}},
            "/api/v1/ca/ssh_user.pub": {"get": {"summary": "SSH user CA (OpenSSH format)", "responses": {"200": text("public key")}}},
            "/api/v1/ca/ssh_target.pub": {"get": {"summary": "SSH target CA (OpenSSH format)", "responses": {"200": text("public key")}}},
            "/api/v1/auth/whoami": {"get": secured(json!({"summary": "the caller's identity",
                "responses": {"200": ok_json(json!({"type": "object", "required": ["user", "groups"]}))}}))},
            "/api/v1/targets": {"get": secured(json!({"summary": "targets the caller may use",
                "parameters": [{"name": "kind", "in": "query", "required": false,
                    "schema": {"type": "string", "enum": ["ssh", "ecs", "postgres", "db", "aws"]}}],
                "responses": {"200": ok_json(json!({"type": "array", "items": {"$ref": "#/components/schemas/Target"}}))}}))},
            "/api/v1/sessions": {"get": secured(json!({"summary": "sessions, live first (view_audit)",
                "parameters": [
                    {"name": "user", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "target", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "kind", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": 4294967295u64}}],
                "responses": {"200": ok_json(json!({"type": "array", "items": {"$ref": "#/components/schemas/Session"}}))}}))},
            "/api/v1/sessions/{id}": {"get": secured(json!({"summary": "one session (view_audit)",
                "parameters": [session_id],
                "responses": {"200": ok_json(json!({"$ref": "#/components/schemas/Session"})), "404": error()}}))},
            "/api/v1/sessions/{id}/recording": {"get": secured(json!({"summary": "the session's asciicast v2 recording (view_audit)",
                "parameters": [session_id],
                "responses": {"200": {"description": "asciicast", "content": {"application/x-asciicast": {"schema": {"type": "string"}}}}, "404": error()}}))},
            "/api/v1/sessions/{id}/terminate": {"post": secured(json!({"summary": "end a live session (admin)",
                "parameters": [session_id],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}}}}},
                "responses": {"202": {"description": "terminating"}, "400": error(), "404": error()}}))},
            "/api/v1/audit/events": {"get": secured(json!({"summary": "audit events, newest first, keyset paged (view_audit)",
                "parameters": filters(),
                "responses": {"200": ok_json(events.clone()), "400": error()}}))},
            "/api/v1/audit/logins": {"get": secured(json!({"summary": "the login history (view_audit)",
                "parameters": filters(),
                "responses": {"200": ok_json(events), "400": error()}}))},
            "/api/v1/audit/export": {"get": secured(json!({"summary": "a filtered view as CSV or JSON lines, streamed; audited as audit.export",
                "parameters": filters().into_iter().chain([
                    json!({"name": "view", "in": "query", "required": false, "schema": {"type": "string",
                        "enum": ["logins", "events", "decisions", "credentials", "sessions"]}}),
                    json!({"name": "format", "in": "query", "required": false, "schema": {"type": "string", "enum": ["csv", "jsonl"]}}),
                ]).collect::<Vec<_>>(),
                "responses": {"200": {"description": "the export", "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/x-ndjson": {"schema": {"type": "string"}}}}, "400": error()}}))},
            "/api/v1/audit/verify": {"get": secured(json!({"summary": "walk the whole hash chain (view_audit); with expect, a head saved earlier must still be there",
                "parameters": [{"name": "expect", "in": "query", "required": false,
                    "schema": {"type": "string", "pattern": "^[0-9]+:[0-9a-f]{64}$"}}],
                "responses": {"200": ok_json(json!({"type": "object", "required": ["ok", "events", "problems"]})), "400": error()}}))},
            "/api/v1/audit/head": {"get": secured(json!({"summary": "the end of the chain as SEQ:HASH (view_audit)",
                "responses": {"200": ok_json(json!({"type": "object", "required": ["seq", "hash", "head"]}))}}))},
            "/api/v1/audit/search": {"get": secured(json!({"summary": "full-text search over ended sessions' output, commands and SQL as literal words, newest first (view_audit; every search is recorded)",
                "parameters": [{"name": "q", "in": "query", "required": true, "schema": {"type": "string", "maxLength": 200}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 200}}],
                "responses": {"200": ok_json(json!({"type": "object", "required": ["hits"]})), "400": error(), "403": error()}}))},
            "/api/v1/aws/credentials": {"post": secured(json!({"summary": "STS credentials for an aws target (credential_process shape)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AwsRequest"}}}},
                "responses": {"200": ok_json(json!({"type": "object"})), "400": error(), "404": error(), "502": error(), "503": error()}}))},
            "/api/v1/aws/console": {"post": secured(json!({"summary": "an AWS console sign-in URL for an aws target",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AwsRequest"}}}},
                "responses": {"200": ok_json(json!({"type": "object"})), "400": error(), "404": error(), "502": error(), "503": error()}}))},
            "/api/v1/auth/logout": {"post": secured(json!({"summary": "end the caller's broker session",
                "responses": {"204": {"description": "logged out"}}}))},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Event": {"type": "object", "required": ["seq", "id", "time", "kind", "outcome"], "properties": {
                    "seq": {"type": "integer"}, "id": {"type": "string"}, "time": {"type": "string"},
                    "kind": {"type": "string"}, "actor": {"type": ["string", "null"]},
                    "source_ip": {"type": ["string", "null"]}, "target": {"type": ["string", "null"]},
                    "session_id": {"type": ["string", "null"]}, "outcome": {"type": "string"},
                    "details": {}}},
                "Session": {"type": "object", "required": ["id", "kind", "user_email", "target", "status", "started_at"], "properties": {
                    "id": {"type": "string"}, "kind": {"type": "string"}, "user_email": {"type": "string"},
                    "target": {"type": "string"}, "status": {"type": "string"},
                    "started_at": {"type": "integer", "description": "µs since the Unix epoch"},
                    "ended_at": {"type": ["integer", "null"]}, "bytes_in": {"type": "integer"}, "bytes_out": {"type": "integer"}}},
                "Target": {"type": "object", "required": ["name", "kind"], "properties": {
                    "name": {"type": "string"}, "kind": {"type": "string"}, "tags": {"type": "object"},
                    "requires": {"type": "array", "items": {"type": "string"}}}},
                "AwsRequest": {"type": "object", "required": ["role"], "properties": {
                    "role": {"type": "string"}, "duration_secs": {"type": ["integer", "null"], "minimum": 0},
                    "reason": {"type": ["string", "null"]}}},
            }
        }
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}
