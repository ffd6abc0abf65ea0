//! `pam`: the broker (`pam serve`) and the user's client, one binary.

fn main() -> std::process::ExitCode {
    // The test suite asks which checkout a binary was built from (several
    // checkouts may share one CARGO_TARGET_DIR); not a user-facing option.
    if std::env::var_os("PAM_TEST_PRINT_CHECKOUT").is_some() {
        println!("{}", env!("CARGO_MANIFEST_DIR"));
        return std::process::ExitCode::SUCCESS;
    }
    pam::cli::main()
}
