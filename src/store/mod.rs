//! Storage: the only module with SQL. SQLite by default (WAL, fsync on
//! commit), PostgreSQL for fleets; both through sqlx with bound parameters.
//!
//! Queries are written once with `$N` placeholders, which both backends
//! accept, and run against either pool through [`with_db!`]. Migrations are
//! embedded from `migrations/<backend>/` and are append-only.

pub mod audit;
pub mod export;
pub mod identity;
pub mod search;
pub mod sessions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, SqlSafeStr};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// A handle on the broker's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: Pool,
    /// SQLite only: connections that commit without waiting for fsync. Rows
    /// written through them become durable with the next fsynced commit (an
    /// audit append), which is how a login or a session start costs one
    /// fsync, not two.
    relaxed: Option<SqlitePool>,
}

/// The pool behind a [`Db`].
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A human message: a bad `database_url`, a timeout, nothing to do.
    #[error("{0}")]
    Invalid(String),
    /// A blocking task working on the store's rows (reading, hashing) died.
    #[error("{task} task: {source}")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The store refused what it was given (a value it cannot hold, a
    /// violated constraint), as opposed to being unavailable, busy or
    /// locked: retrying the same statement would fail again, while other
    /// statements may succeed.
    pub fn is_refusal(&self) -> bool {
        let Error::Sqlx(sqlx::Error::Database(e)) = self else {
            return matches!(
                self,
                Error::Sqlx(sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. })
            );
        };
        if e.is_unique_violation() || e.is_check_violation() || e.is_foreign_key_violation() {
            return true;
        }
        let code = e.code().unwrap_or_default();
        if e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some()
        {
            // Class 22: data exception (a NUL byte, a bad encoding, a value
            // out of range); class 23: integrity constraint violation;
            // 54000: program limit exceeded (a row too large).
            code.starts_with("22") || code.starts_with("23") || code == "54000"
        } else {
            // SQLite primary result codes (the extended code's low byte):
            // 18 TOOBIG, 19 CONSTRAINT, 20 MISMATCH, 25 RANGE.
            let primary = code.parse::<u32>().map(|c| c & 0xff).unwrap_or(0);
            matches!(primary, 18 | 19 | 20 | 25)
        }
    }
}

/// Runs the same body against whichever pool `db` holds. The body is
/// compiled once per backend, so each arm is monomorphic.
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db.pool() {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_db;

/// Runs `$body` (with `$tx` a transaction) on the relaxed side of `$db`: the
/// commit does not wait for the disk (SQLite: the NORMAL-sync pool;
/// PostgreSQL: `synchronous_commit = off` for this transaction). The rows
/// become durable with the next fsynced commit, which callers make right
/// after (an audit append) before anyone is told anything.
macro_rules! relaxed_tx {
    ($db:expr, $tx:ident => $body:expr) => {{
        let relaxed = $db.relaxed();
        let postgres = relaxed.backend() == "postgres";
        $crate::store::with_db!(&relaxed, pool => {
            let mut $tx = pool.begin().await?;
            if postgres {
                sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *$tx).await?;
            }
            let out = $body;
            $tx.commit().await?;
            out
        })
    }};
}
pub(crate) use relaxed_tx;

/// Whether a SQLite connection given back to the pool may be used again.
/// A write that failed inside a transaction (`SQLITE_FULL` on a full disk,
/// an I/O error) can make SQLite roll the transaction back by itself; the
/// driver's own rollback then fails and it goes on believing a transaction
/// is open, so every later `BEGIN` on that connection becomes a savepoint
/// of a transaction that is not there, and the store wedges ("database is
/// locked") until the connection is closed. Such a connection is closed
/// instead of reused: the pool opens a fresh one.
async fn sqlite_reusable(
    conn: &mut sqlx::SqliteConnection,
) -> std::result::Result<bool, sqlx::Error> {
    // The rollback of a dropped transaction is queued: let it run first.
    conn.ping().await?;
    Ok(!conn.is_in_transaction())
}

impl Db {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), failing within
    /// `timeout` when the server does not answer.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?.application_name("pam");
            // One direct connection first: a refused or unreachable server is
            // reported at once instead of after the pool's retries.
            let probe = tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(&options))
                .await
                .map_err(|_| Error::Invalid(format!("no answer within {timeout:?}")))??;
            probe.close().await?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .min_connections(1)
                .acquire_timeout(timeout)
                .connect_with(options);
            let pool = tokio::time::timeout(timeout, pool)
                .await
                .map_err(|_| Error::Invalid(format!("no answer within {timeout:?}")))??;
            Ok(Db {
                pool: Pool::Postgres(pool),
                relaxed: None,
            })
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // An acknowledged audit event survives a crash and a power loss.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .min_connections(1)
                .acquire_timeout(timeout)
                .after_release(|conn, _| Box::pin(sqlite_reusable(conn)))
                .connect_with(options.clone())
                .await?;
            let relaxed = SqlitePoolOptions::new()
                .max_connections(4)
                .min_connections(0)
                .acquire_timeout(timeout)
                .after_release(|conn, _| Box::pin(sqlite_reusable(conn)))
                .connect_with(options.synchronous(SqliteSynchronous::Normal))
                .await?;
            Ok(Db {
                pool: Pool::Sqlite(pool),
                relaxed: Some(relaxed),
            })
        } else {
            Err(Error::Invalid(
                "database_url must start with sqlite: or postgres://".into(),
            ))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The same database, for writes whose durability may wait for the next
    /// fsynced commit (on PostgreSQL: the same pool; see `commit_relaxed`).
    pub fn relaxed(&self) -> Db {
        match &self.relaxed {
            Some(pool) => Db {
                pool: Pool::Sqlite(pool.clone()),
                relaxed: None,
            },
            None => self.clone(),
        }
    }

    /// Applies the embedded migrations. Concurrent brokers on one PostgreSQL
    /// database serialize on sqlx's advisory lock.
    pub async fn migrate(&self) -> Result<usize> {
        let list = match self.pool {
            Pool::Sqlite(_) => embedded::SQLITE,
            Pool::Postgres(_) => embedded::POSTGRES,
        };
        let migrations = list
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    (*name).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        let migrator = Migrator::with_migrations(migrations);
        let before = self.applied_migrations().await.unwrap_or(0);
        with_db!(self, pool => migrator.run(pool).await)?;
        let after = self.applied_migrations().await?;
        Ok(after.saturating_sub(before))
    }

    async fn applied_migrations(&self) -> Result<usize> {
        let count: i64 = with_db!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await
        })?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// True when the database answers a trivial query.
    /// True when the store answers within 2 s (readiness, and the SSH
    /// room's banner, must not hang on a store that is down).
    pub async fn ping(&self) -> bool {
        let ping = async {
            let result: std::result::Result<i32, _> =
                with_db!(self, pool => sqlx::query_scalar("SELECT 1").fetch_one(pool).await);
            result.is_ok()
        };
        tokio::time::timeout(Duration::from_secs(2), ping)
            .await
            .unwrap_or(false)
    }

    pub async fn close(&self) {
        with_db!(self, pool => pool.close().await);
        if let Some(relaxed) = &self.relaxed {
            relaxed.close().await;
        }
    }
}

/// A database URL with any password replaced, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Dynamic SQL assembled from fixed fragments only (never from input).
pub(crate) fn sql(text: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://pam:s3cret@db:5432/pam"),
            "postgres://pam:***@db:5432/pam"
        );
        assert_eq!(redact_url("sqlite://./pam.db"), "sqlite://./pam.db");
    }

    #[tokio::test]
    async fn sqlite_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Db::connect(&url, Duration::from_secs(5)).await.unwrap();
        assert!(db.migrate().await.unwrap() >= 1);
        assert_eq!(db.migrate().await.unwrap(), 0);
        assert!(db.ping().await);
    }
}
