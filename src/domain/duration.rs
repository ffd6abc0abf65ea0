//! Durations as people write them in configuration, flags and filters.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A duration written like `15m`, `8h`, `1h30m`, `90s` or `500ms`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty duration".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "invalid duration {text:?} (use e.g. 30s, 15m, 8h, 1h30m)"
                ));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(number),
                "s" => Duration::from_secs(number),
                "m" => Duration::from_secs(number.saturating_mul(60)),
                "h" => Duration::from_secs(number.saturating_mul(3600)),
                "d" => Duration::from_secs(number.saturating_mul(86_400)),
                _ => {
                    return Err(format!(
                        "invalid duration {text:?}: unit must be ms, s, m, h or d"
                    ));
                }
            };
            total = total.saturating_add(part);
        }
        Ok(Self(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, secs) in [
            ("15m", 900),
            ("8h", 28_800),
            ("1h30m", 5400),
            ("90s", 90),
            ("2d", 172_800),
        ] {
            let d = HumanDuration::parse(text).unwrap();
            assert_eq!(d.0.as_secs(), secs, "{text}");
            assert_eq!(HumanDuration::parse(&d.to_string()).unwrap(), d);
        }
        assert_eq!(
            HumanDuration::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        for bad in ["", "m", "15", "15x", "h1", "-5m"] {
            assert!(HumanDuration::parse(bad).is_err(), "{bad}");
        }
    }
}
