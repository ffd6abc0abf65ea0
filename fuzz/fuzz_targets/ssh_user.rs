//! Fuzzes what an SSH client says before it authenticates: the `PAM-TARGET`
//! preamble scanner, which must decide the same however the bytes arrive,
//! and the username split (`TARGET`, `LOGIN@TARGET`, login after a
//! preamble), which must round-trip.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run ssh_user -- -max_total_time=600`

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/ssh/username.rs"]
#[allow(dead_code)]
mod username;

use username::Preamble;

fuzz_target!(|data: &[u8]| {
    // The scanner: a decision on a prefix is the decision on the whole.
    let whole = username::scan(data);
    if let Preamble::Target { target, consumed } = &whole {
        assert!(*consumed <= data.len() && *consumed <= username::MAX_PREAMBLE);
        assert!(!target.is_empty() && !target.contains('\n'));
    }
    if !data.is_empty() {
        let cut = data[0] as usize % data.len();
        let prefix = username::scan(&data[..cut]);
        assert!(
            prefix == Preamble::NeedMore || prefix == whole,
            "{prefix:?} on a prefix, {whole:?} on the whole"
        );
    }

    // The username: never panics, and LOGIN@TARGET round-trips.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (login, target) = username::split(text, None);
    match login {
        Some(login) => assert_eq!(format!("{login}@{target}"), text),
        None => assert_eq!(target, text),
    }
    assert!(!target.contains('@'));
    let (login, announced) = username::split(text, Some("announced"));
    assert_eq!(announced, "announced");
    assert_eq!(login.is_none(), text.is_empty() || text == "-");
});
