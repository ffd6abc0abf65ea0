//! Full-text search over sessions: what a search is (its words, taken as
//! literal text), what a hit is, and the snippet shown for it.
//!
//! Both backends match *words*: text is reduced to its runs of letters and
//! digits (everything else separates words), case-folded, and a search
//! finds chunks holding the query's words in that order, next to each
//! other. Nothing in a query is an operator: quotes, `*`, `OR`, `NEAR(`,
//! `-`, `:`, regular expressions and SQL are text whose punctuation is
//! dropped like the indexed text's.

use serde::{Deserialize, Serialize};

/// The longest search accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// Hits returned at most.
pub const MAX_LIMIT: u32 = 200;

/// Where a chunk of indexed text came from.
pub mod source {
    /// Terminal output from the recording.
    pub const OUTPUT: &str = "output";
    /// A shell command (`ssh.command`) or an exec command (`ssh.exec`).
    pub const COMMAND: &str = "command";
    /// A statement from a PostgreSQL session's query log.
    pub const SQL: &str = "sql";
}

/// A search as asked: the text and how many hits at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The text as the user wrote it.
    pub text: String,
    /// The words matched, lowercase, space-separated (may be empty: then
    /// nothing matches).
    pub words: String,
    pub limit: u32,
}

/// Why a search is refused before it runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the search is empty: give a word that the session showed or ran")]
    Empty,
    #[error("the search is too long (at most {MAX_QUERY_CHARS} characters)")]
    TooLong,
}

impl Query {
    /// A search for `text` (treated as literal words), at most `limit` hits.
    pub fn parse(text: &str, limit: Option<u32>) -> Result<Query, Refused> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(Refused::Empty);
        }
        if trimmed.chars().count() > MAX_QUERY_CHARS {
            return Err(Refused::TooLong);
        }
        Ok(Query {
            text: trimmed.to_owned(),
            words: words(trimmed),
            limit: limit.unwrap_or(50).clamp(1, MAX_LIMIT),
        })
    }

    /// The FTS5 MATCH expression: the words as one quoted phrase, so no
    /// part of the input is read as FTS5 syntax.
    pub fn fts5_phrase(&self) -> String {
        format!("\"{}\"", self.words.replace('"', "\"\""))
    }
}

/// One chunk of a session that matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub session_id: String,
    pub kind: String,
    pub user: String,
    pub target: String,
    /// Microseconds since the epoch.
    pub started_at: i64,
    /// `output`, `command` or `sql` (see [`source`]).
    pub source: String,
    /// Seconds into the recording where the matching text starts.
    pub offset: f64,
    /// The matching text around the first matched word.
    pub snippet: String,
}

/// Text reduced to its words: lowercase runs of letters and digits joined
/// by one space.
pub fn words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_word = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if !in_word && !out.is_empty() {
                out.push(' ');
            }
            out.extend(c.to_lowercase());
            in_word = true;
        } else {
            in_word = false;
        }
    }
    out
}

/// Up to about `width` characters of `body` around the first occurrence
/// of `first_word` (case-insensitive), with `…` where it was cut.
pub fn snippet(body: &str, first_word: &str, width: usize) -> String {
    let chars: Vec<char> = body.chars().collect();
    let lower: Vec<char> = chars
        .iter()
        .map(|c| c.to_lowercase().next().unwrap_or(*c))
        .collect();
    let needle: Vec<char> = first_word.chars().collect();
    let at = if needle.is_empty() {
        0
    } else {
        lower
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .unwrap_or(0)
    };
    let start = at.saturating_sub(width / 3);
    let end = (start + width).min(chars.len());
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.extend(chars[start..end].iter().map(|c| match c {
        '\n' | '\r' | '\t' => ' ',
        c => *c,
    }));
    if end < chars.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_is_text() {
        for (input, expect) in [
            ("hello", "hello"),
            ("\"quoted\" phrase", "quoted phrase"),
            ("foo* OR bar", "foo or bar"),
            ("NEAR(a b)", "near a b"),
            ("-secret col:value", "secret col value"),
            ("^ab.*c$|[x]+", "ab c x"),
            ("'; DROP TABLE sessions; --", "drop table sessions"),
            ("/etc/passwd", "etc passwd"),
            ("Ünïcode ÉTÉ", "ünïcode été"),
            ("***", ""),
        ] {
            let q = Query::parse(input, None).unwrap();
            assert_eq!(q.words, expect, "{input}");
            assert!(!q.fts5_phrase()[1..q.fts5_phrase().len() - 1].contains('"'));
        }
        assert_eq!(Query::parse("  ", None), Err(Refused::Empty));
        assert_eq!(
            Query::parse(&"x".repeat(MAX_QUERY_CHARS + 1), None),
            Err(Refused::TooLong)
        );
        assert_eq!(Query::parse("a", Some(100_000)).unwrap().limit, MAX_LIMIT);
    }

    #[test]
    fn snippets_center_on_the_word() {
        let body = format!("{} needle here\nmore", "x".repeat(100));
        let s = snippet(&body, "needle", 30);
        assert!(s.starts_with('…') && s.contains("needle here more"), "{s}");
        assert_eq!(snippet("short NEEDLE", "needle", 80), "short NEEDLE");
    }
}
