//! Nothing reaches a database before its records are durable, the
//! password included: for a target with `allow_weak_auth`, the broker's
//! password goes in cleartext or as MD5 only once `db.weak_auth` is on
//! record, and not at all when the store refuses that record. The
//! database here is a raw socket that speaks the startup protocol, asks for
//! the password in cleartext and says whether it came and what the store
//! held at that moment; the client is the real psql. Both backends.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::postgres::{broker, psql, put_secret, text, token, via_broker};
use crate::support::{TestApp, TestDatabase};

const PASSWORD: &str = "weak-but-allowed-9f3c";

/// What the fake database saw of one login.
#[derive(Debug)]
enum Seen {
    /// The password came; the server waits for `go` before it answers.
    Password(Vec<u8>, oneshot::Sender<()>),
    /// The broker closed the connection without sending it.
    NoPassword,
}

/// Accepts logins: StartupMessage, then AuthenticationCleartextPassword.
async fn fake_database() -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, tx.clone()));
        }
    });
    (address, rx)
}

async fn serve(mut socket: TcpStream, seen: mpsc::UnboundedSender<Seen>) {
    let mut len = [0u8; 4];
    socket.read_exact(&mut len).await.unwrap();
    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    socket.read_exact(&mut startup).await.unwrap();
    // AuthenticationCleartextPassword.
    socket.write_all(b"R\0\0\0\x08\0\0\0\x03").await.unwrap();
    let mut tag = [0u8; 1];
    if socket.read_exact(&mut tag).await.is_err() {
        let _ = seen.send(Seen::NoPassword);
        return;
    }
    assert_eq!(tag[0], b'p', "a PasswordMessage");
    socket.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    socket.read_exact(&mut body).await.unwrap();
    let (go, wait) = oneshot::channel();
    let _ = seen.send(Seen::Password(body, go));
    let _ = wait.await;
    // AuthenticationOk, ReadyForQuery (idle); then the first query ends it.
    let _ = socket.write_all(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I").await;
    let _ = socket.read(&mut [0u8; 64]).await;
}

async fn weak_target(address: &str) -> String {
    let secret = put_secret(
        &serde_json::json!({"username": "app_user", "password": PASSWORD, "engine": "postgres"})
            .to_string(),
    )
    .await;
    format!(
        r#"
[[target]]
name = "weak"
kind = "postgres"
address = "{address}"
database = "app"
credential = {{ from = "secretsmanager", secret_id = "{secret}" }}
tls = "disable"
allow_weak_auth = true
connect_timeout = "5s"
tags = {{ env = "dev" }}
"#
    )
}

/// psql through the broker to `weak`, in the background.
fn connect(app: &TestApp, bob: &str) -> tokio::task::JoinHandle<std::process::Output> {
    let conninfo = via_broker(app, "bob@example.test", "weak");
    let bob = bob.to_owned();
    tokio::spawn(async move { psql(&conninfo, &bob, &["-c", "select 1"]).await })
}

/// Makes the store refuse every `db.weak_auth` record (a trigger).
async fn refuse_weak_auth_records(database: &TestDatabase) {
    use sqlx::Connection;
    if database.is_postgres() {
        let mut conn = sqlx::PgConnection::connect(&database.url).await.unwrap();
        for sql in [
            "CREATE FUNCTION refuse_weak_auth() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'the test refuses db.weak_auth'; END $$",
            "CREATE TRIGGER refuse_weak_auth BEFORE INSERT ON audit_events \
             FOR EACH ROW WHEN (NEW.kind = 'db.weak_auth') EXECUTE FUNCTION refuse_weak_auth()",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&database.url)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse_weak_auth BEFORE INSERT ON audit_events \
             WHEN NEW.kind = 'db.weak_auth' \
             BEGIN SELECT RAISE(ABORT, 'the test refuses db.weak_auth'); END",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_password_goes_out_only_once_its_db_weak_auth_record_is_durable() {
    let (address, mut seen) = fake_database().await;
    let app = broker(weak_target(&address).await).await;
    let bob = token(&app, "bob").await;

    // 1. The store takes the record: it is there when the password arrives.
    let client = connect(&app, &bob);
    let arrived = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .expect("the fake database answered")
        .unwrap();
    let Seen::Password(body, go) = arrived else {
        panic!(
            "the password never came: {:?}",
            text(&client.await.unwrap())
        );
    };
    assert_eq!(body, format!("{PASSWORD}\0").as_bytes());
    let weak = app.events("db.weak_auth").await;
    assert_eq!(
        weak.len(),
        1,
        "db.weak_auth is durable before the password goes"
    );
    assert_eq!(weak[0].target.as_deref(), Some("weak"));
    assert_eq!(weak[0].actor.as_deref(), Some("bob@example.test"));
    assert!(weak[0].session_id.is_some());
    let details = &app.event_details("db.weak_auth").await[0];
    assert_eq!(details["password_sent"], "in cleartext");
    assert_eq!(details["db_user"], "app_user");
    assert_eq!(details["upstream_tls"], false);
    go.send(()).unwrap();
    let _ = client.await.unwrap();

    // 2. The store refuses it: the password is never sent, the client is told.
    refuse_weak_auth_records(&app.database).await;
    let refused = connect(&app, &bob).await.unwrap();
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(
        message.contains("it was not sent") && message.contains("db.weak_auth"),
        "{message}"
    );
    let arrived = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .expect("the fake database saw the connection end")
        .unwrap();
    assert!(matches!(arrived, Seen::NoPassword), "{arrived:?}");
    assert_eq!(app.events("db.weak_auth").await.len(), 1);
}
