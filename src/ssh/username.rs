//! What an SSH client says before it authenticates, parsed without I/O:
//! the optional `PAM-TARGET <name>` preamble line that `pam ssh-proxy`
//! sends before the SSH banner, and the SSH username (`TARGET`,
//! `LOGIN@TARGET`, or the login alone after a preamble).
//!
//! Untrusted input from anyone on the network, so this file is `std`-only
//! and fuzzed as it is (`fuzz/fuzz_targets/ssh_user.rs`).

/// Longest preamble line accepted, newline included.
pub const MAX_PREAMBLE: usize = 256;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preamble<'a> {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// An ordinary SSH client: every byte belongs to SSH.
    Ssh,
    /// A preamble naming `target` (not yet checked against the target
    /// name rules), followed by `consumed` bytes that are not SSH's.
    Target { target: &'a str, consumed: usize },
    /// Neither SSH nor a well-formed preamble.
    Malformed(&'static str),
}

/// Looks at the bytes read so far (the caller reads more on `NeedMore`).
pub fn scan(buf: &[u8]) -> Preamble<'_> {
    const PREFIX: &[u8] = b"PAM-TARGET ";
    if buf.len() < 4 {
        return Preamble::NeedMore;
    }
    if !buf.starts_with(b"PAM-") {
        return Preamble::Ssh;
    }
    // The same verdict on a prefix as on the whole (fuzzed): the prefix
    // first, then the length, then the name.
    if !buf.starts_with(&PREFIX[..buf.len().min(PREFIX.len())]) {
        return Preamble::Malformed("malformed preamble");
    }
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() >= MAX_PREAMBLE {
            Preamble::Malformed("preamble line too long")
        } else {
            Preamble::NeedMore
        };
    };
    if end >= MAX_PREAMBLE {
        return Preamble::Malformed("preamble line too long");
    }
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(name) = line.strip_prefix(PREFIX) else {
        return Preamble::Malformed("malformed preamble");
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return Preamble::Malformed("malformed preamble");
    };
    let name = name.trim();
    if name.is_empty() {
        return Preamble::Malformed("malformed preamble");
    }
    Preamble::Target {
        target: name,
        consumed: end + 1,
    }
}

/// Splits an SSH username into (login, target). After a preamble the
/// whole username is the login (`-` or empty: the target's default).
pub fn split<'a>(user: &'a str, announced: Option<&'a str>) -> (Option<&'a str>, &'a str) {
    if let Some(target) = announced {
        let login = (user != "-" && !user.is_empty()).then_some(user);
        return (login, target);
    }
    match user.rsplit_once('@') {
        Some((login, target)) => (Some(login), target),
        None => (None, user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_name_a_target_and_maybe_a_login() {
        assert_eq!(split("web-dev", None), (None, "web-dev"));
        assert_eq!(split("root@web-dev", None), (Some("root"), "web-dev"));
        assert_eq!(split("a@b@web-dev", None), (Some("a@b"), "web-dev"));
        assert_eq!(split("-", Some("db")), (None, "db"));
        assert_eq!(split("ec2-user", Some("db")), (Some("ec2-user"), "db"));
    }

    #[test]
    fn preambles_are_recognised_whole_and_cut() {
        let stream = b"PAM-TARGET web-dev\r\nSSH-2.0-OpenSSH_9.2\r\n";
        for cut in 0..stream.len() {
            let seen = scan(&stream[..cut]);
            if cut < 20 {
                assert_eq!(seen, Preamble::NeedMore, "{cut}");
            } else {
                assert_eq!(
                    seen,
                    Preamble::Target {
                        target: "web-dev",
                        consumed: 20
                    }
                );
            }
        }
        assert_eq!(scan(b"SSH-2.0-x"), Preamble::Ssh);
        assert!(matches!(scan(b"PAM-X\n"), Preamble::Malformed(_)));
        assert!(matches!(scan(b"PAM-TARGET \n"), Preamble::Malformed(_)));
        assert!(matches!(
            scan(&[
                b'P', b'A', b'M', b'-', b'T', b'A', b'R', b'G', b'E', b'T', b' ', b'x', 0xff, b'\n'
            ]),
            Preamble::Malformed(_)
        ));
        assert!(matches!(
            scan(format!("PAM-TARGET {}", "x".repeat(300)).as_bytes()),
            Preamble::Malformed(_)
        ));
    }
}
