//! Refusals with their SQLSTATEs, nothing reaching the database before the session is on record, expired tokens.

use super::*;

#[tokio::test]
async fn refusals_are_clear_postgres_errors_and_audited() {
    let db = ScramDb::create().await;
    let wrong =
        put_secret(&serde_json::json!({"username": db.role, "password": "not-it"}).to_string())
            .await;
    let closed_port = free_port();
    // An RDS IAM target: the broker signs a token with its (moto) keys; the
    // SCRAM cluster is no RDS, so it refuses the token as a password.
    let iam = format!(
        r#"
[[target]]
name = "iam-dev"
kind = "postgres"
address = "{}"
database = "{}"
credential = {{ from = "rds-iam", db_user = "{}" }}
tls = "verify-full"
ca_file = "{}"
tags = {{ env = "dev" }}
"#,
        db.address(),
        db.database,
        db.role,
        required_env("PAM_TEST_PG_SCRAM_CA")
    );
    let toml = format!(
        "{iam}{}{}{}",
        target("good-dev", &db, r#"env = "dev""#).await,
        target_with(
            "wrongpw-dev",
            &db.address(),
            &db.database,
            &wrong,
            r#"env = "dev""#
        ),
        target_with(
            "down-dev",
            &format!("127.0.0.1:{closed_port}"),
            &db.database,
            &wrong,
            r#"env = "dev""#
        ),
    );
    let app = broker(toml).await;
    let bob = token(&app, "bob").await;
    let dave = token(&app, "dave").await;
    let refused = |result: Result<Wire, Fatal>| match result {
        Ok(_) => panic!("connected"),
        Err(fatal) => fatal,
    };

    let bad = refused(Wire::connect(&app, "bob@example.test", "good-dev", "not-a-token").await);
    assert_eq!(bad.code, "28P01", "{bad:?}");
    assert!(bad.message.contains("invalid broker token"), "{bad:?}");

    let other = refused(Wire::connect(&app, "alice@example.test", "good-dev", &bob).await);
    assert_eq!(other.code, "28000", "{other:?}");

    let denied = refused(Wire::connect(&app, "dave@example.test", "good-dev", &dave).await);
    assert_eq!(denied.code, "42501", "{denied:?}");
    assert!(denied.message.contains("denied"), "{denied:?}");

    let unknown = refused(Wire::connect(&app, "bob@example.test", "nope", &bob).await);
    assert_eq!(unknown.code, "3D000", "{unknown:?}");

    let down = refused(Wire::connect(&app, "bob@example.test", "down-dev", &bob).await);
    assert_eq!(down.code, "08006", "{down:?}");
    assert!(down.message.contains("cannot reach"), "{down:?}");

    let wrong_password =
        refused(Wire::connect(&app, "bob@example.test", "wrongpw-dev", &bob).await);
    assert_eq!(wrong_password.code, "08006", "{wrong_password:?}");
    assert!(
        wrong_password
            .message
            .contains("refused the broker's login"),
        "{wrong_password:?}"
    );
    assert!(
        wrong_password.message.contains("28P01"),
        "{wrong_password:?}"
    );
    assert!(!wrong_password.message.contains("not-it"));

    let iam_refused = refused(Wire::connect(&app, "bob@example.test", "iam-dev", &bob).await);
    assert_eq!(iam_refused.code, "08006", "{iam_refused:?}");
    assert!(
        iam_refused.message.contains("28P01") && iam_refused.message.contains(&db.role),
        "the database saw an RDS IAM login for the role: {iam_refused:?}"
    );
    assert!(
        !iam_refused.message.contains("X-Amz"),
        "the token is never shown"
    );

    // psql says the same, and cleartext is refused outside --dev.
    let out = psql(
        &via_broker(&app, "bob@example.test", "good-dev"),
        "wrong",
        &["-c", "select 1"],
    )
    .await;
    assert!(
        text(&out).contains("invalid broker token"),
        "{}",
        text(&out)
    );
    let plain = psql(
        &format!(
            "host=127.0.0.1 port={} user=bob@example.test dbname=good-dev sslmode=disable",
            app.postgres.port()
        ),
        &bob,
        &["-c", "select 1"],
    )
    .await;
    assert!(
        text(&plain).contains("the broker requires TLS"),
        "{}",
        text(&plain)
    );
    // And the good one works.
    let good = Wire::connect(&app, "bob@example.test", "good-dev/postgres", &bob).await;
    assert!(good.is_ok(), "{:?}", good.err());

    // Audited: rejected tokens, the denial, the failed upstream logins.
    let rejected = app.event_details("token.rejected").await;
    assert!(
        rejected
            .iter()
            .any(|d| d["room"] == "postgres" && d["reason"] == "invalid token")
    );
    assert!(rejected.iter().any(|d| {
        d["room"] == "postgres"
            && d["reason"]
                .as_str()
                .unwrap()
                .contains("not to the user named")
    }));
    let decisions = app.events("policy.decision").await;
    assert!(
        decisions
            .iter()
            .any(|e| e.actor.as_deref() == Some("dave@example.test")
                && e.outcome == "denied"
                && e.target.as_deref() == Some("good-dev"))
    );
    let failed_starts: Vec<_> = app
        .events("session.start")
        .await
        .into_iter()
        .filter(|e| e.outcome == "failure")
        .collect();
    assert!(
        failed_starts
            .iter()
            .any(|e| e.target.as_deref() == Some("nope")),
        "{failed_starts:#?}"
    );
    // The broker's login reaches a database only once the session is on
    // record: a database that is down or refuses it ends that session in
    // error.
    let failed_ends = || async {
        app.events("session.end")
            .await
            .into_iter()
            .filter(|e| e.outcome == "failure")
            .filter_map(|e| e.target)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            let ended = failed_ends().await;
            ["down-dev", "wrongpw-dev", "iam-dev"]
                .iter()
                .all(|t| ended.iter().any(|e| e == t))
        })
        .await,
        "{:#?}",
        failed_ends().await
    );
    let trail = whole_trail(&app).await;
    assert!(!trail.contains(&bob) && !trail.contains(&db.password));
    assert!(
        !trail.contains("X-Amz-Signature"),
        "no RDS token in the trail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_or_query_reaches_the_database_before_the_session_is_on_record() {
    let db = ScramDb::create().await;
    let app = broker(target("order-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let logged_in = || async {
        let mut admin = admin_conn(&required_env("PAM_TEST_PG_SCRAM_URL")).await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
            .bind(&db.role)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        n
    };
    // While nothing can be appended to the trail, the policy decision and
    // session.start cannot be durable.
    let block = app.block_trail().await;
    let client = {
        let conninfo = via_broker(&app, "bob@example.test", "order-dev");
        let bob = bob.clone();
        tokio::spawn(async move { psql(&conninfo, &bob, &["-c", "select 'ran-' || 6*7"]).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        logged_in().await,
        0,
        "the broker logged in to the database before session.start was durable"
    );
    assert!(app.events("session.start").await.is_empty());
    block.release().await;
    let out = client.await.unwrap();
    assert_eq!(stdout(&out).trim(), "ran-42", "{}", text(&out));
    assert_eq!(app.events("session.start").await.len(), 1);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let db = ScramDb::create().await;
    let app = broker(target("exp-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    // The same session's token, signed by the broker, an hour past its end.
    let keys = pam::keys::KeyMaterial::load(&app.config.keys_dir()).unwrap();
    let signer = pam::identity::token::TokenKeys::new(
        &keys.token_signing,
        app.config.server.public_url.as_str(),
    );
    let mut claims = signer.verify(&bob).unwrap();
    claims.exp -= 9 * 3600;
    claims.iat -= 9 * 3600;
    claims.nbf -= 9 * 3600;
    let expired = signer.sign(&claims).unwrap();
    let fatal = match Wire::connect(&app, "bob@example.test", "exp-dev", &expired).await {
        Ok(_) => panic!("an expired token was accepted"),
        Err(fatal) => fatal,
    };
    assert_eq!(fatal.code, "28P01", "{fatal:?}");
    assert!(fatal.message.contains("expired"), "{fatal:?}");
    let rejected = app.event_details("token.rejected").await;
    assert!(
        rejected
            .iter()
            .any(|d| d["room"] == "postgres" && d["reason"].as_str().unwrap().contains("expired"))
    );
}
