//! The real peers the tests talk to. Shared ones (moto, the SCRAM
//! PostgreSQL cluster) are started by `scripts/test` and found through the
//! environment; per-test ones (sshd, the IdP) are started here.

/// Reads a variable `scripts/test` exports, with a clear message when the
/// suite was started some other way.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite through ./scripts/test, which installs and starts the real peers")
    })
}
