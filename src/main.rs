//! `pam`: the broker (`pam serve`) and the user's client, one binary.

fn main() -> std::process::ExitCode {
    pam::cli::main()
}
