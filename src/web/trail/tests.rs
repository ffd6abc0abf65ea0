//! Unit tests of the audit trail pages' pure parts.

use super::*;

#[test]
fn csv_quotes_and_defuses_formulas() {
    let mut out = String::new();
    csv_row(
        &mut out,
        &[
            "a",
            "b,c",
            "say \"hi\"",
            "=cmd()",
            "-1",
            "x\ny",
            "\x1b]0;owned\x07",
        ],
    );
    assert_eq!(
        out,
        "a,\"b,c\",\"say \"\"hi\"\"\",'=cmd(),'-1,x\\ny,\\u{1b}]0;owned\\u{7}\r\n"
    );
}

#[test]
fn filters_ignore_empty_fields_and_reject_bad_cursors() {
    let f = Filters {
        user: Some("  ".into()),
        outcome: Some("failure".into()),
        ..Filters::default()
    };
    let filter = View::Logins.event_filter(&f, 10).unwrap();
    assert_eq!(filter.actor, None);
    assert_eq!(filter.outcome.as_deref(), Some("failure"));
    assert_eq!(filter.kinds.len(), 3);
    let bad = Filters {
        before: Some("x".into()),
        ..Filters::default()
    };
    assert!(View::Events.event_filter(&bad, 10).is_err());
    assert!(View::session_filter(&bad, 10).is_err());
    let bad_time = Filters {
        since: Some("yesterday-ish".into()),
        ..Filters::default()
    };
    assert!(View::Logins.event_filter(&bad_time, 10).is_err());
}
