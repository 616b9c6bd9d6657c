//! What a new token asks for (the API's body, the CLI's flags), checked into the record the
//! registry stores.
//!
//! Invariants: a refusal names the field and the rule; scopes and device patterns are kept once
//! each, scopes in the order of [`Scope`]; an expiry is above zero and at most [`MAX_EXPIRY`], so
//! a token that looks like it expires always does.

use super::identity::{SCOPE_NAMES, Scope};
use crate::config::HumanDuration;
use crate::store::TokenRecord;

/// Longest life a token may be given: beyond it, an expiry is a typo or a way around expiry.
pub const MAX_EXPIRY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
/// Longest token name.
pub const MAX_NAME: usize = 64;
/// Most device patterns one token may carry.
pub const MAX_DEVICE_PATTERNS: usize = 32;
/// Longest device pattern.
pub const MAX_PATTERN: usize = 64;

/// What a new token asks for, before validation (the API body and the CLI's flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSpec {
    /// A name for people: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Scope names: at least one of `read`, `command`, `admin`, `metrics`, `sync`.
    pub scopes: Vec<String>,
    /// Device-id patterns (`*` wildcards); empty means every device.
    pub devices: Vec<String>,
    /// How long it lives (`30d`, `12h`); `None` for ever.
    pub expires: Option<String>,
}

/// Why a [`TokenSpec`] was refused; the text names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidToken(pub String);

impl TokenSpec {
    /// The record for this spec, made at `now_ms`, or why it is refused.
    pub fn validate(&self, now_ms: u64) -> Result<TokenRecord, InvalidToken> {
        let bad = |text: String| Err(InvalidToken(text));
        if !device_protocol::is_valid_id(&self.name) || self.name.len() > MAX_NAME {
            return bad(format!(
                "`name`: 1 to {MAX_NAME} of A-Z a-z 0-9 . _ - (got {:?})",
                self.name.chars().take(80).collect::<String>()
            ));
        }
        if self.scopes.is_empty() {
            return bad(format!("`scopes`: at least one of {SCOPE_NAMES}"));
        }
        let mut scopes: Vec<Scope> = Vec::new();
        for name in &self.scopes {
            match Scope::parse(name) {
                Some(scope) if !scopes.contains(&scope) => scopes.push(scope),
                Some(_) => {}
                None => {
                    return bad(format!(
                        "`scopes`: {:?} is not one of {SCOPE_NAMES}",
                        name.chars().take(80).collect::<String>()
                    ));
                }
            }
        }
        scopes.sort_by_key(|s| *s as u8);
        if self.devices.len() > MAX_DEVICE_PATTERNS {
            return bad(format!("`devices`: at most {MAX_DEVICE_PATTERNS} patterns"));
        }
        let mut devices: Vec<String> = Vec::new();
        for pattern in &self.devices {
            let valid = !pattern.is_empty()
                && pattern.len() <= MAX_PATTERN
                && pattern
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'));
            if !valid {
                return bad(format!(
                    "`devices`: {:?} is not 1 to {MAX_PATTERN} of A-Z a-z 0-9 . _ - and *",
                    pattern.chars().take(80).collect::<String>()
                ));
            }
            if !devices.contains(pattern) {
                devices.push(pattern.clone());
            }
        }
        let expires_ms = match &self.expires {
            None => None,
            Some(text) => {
                let d = HumanDuration::parse(text)
                    .map_err(|e| InvalidToken(format!("`expires`: {e}")))?
                    .0;
                if d.is_zero() {
                    return bad("`expires`: a duration above zero, like 30d or 12h".into());
                }
                // A saturated parse (`3000000d` and larger) or a life of centuries would make a
                // token that never expires while it looks like one that does.
                let at = u64::try_from(d.as_millis())
                    .ok()
                    .filter(|_| d <= MAX_EXPIRY)
                    .and_then(|ms| now_ms.checked_add(ms));
                match at {
                    Some(at) => Some(at),
                    None => {
                        return bad(format!(
                            "`expires`: at most {} days (100 years); omit it for a token that never expires",
                            MAX_EXPIRY.as_secs() / 86_400
                        ));
                    }
                }
            }
        };
        Ok(TokenRecord {
            name: self.name.clone(),
            scopes: scopes.iter().map(|s| s.name().to_owned()).collect(),
            devices,
            created_ms: now_ms,
            expires_ms,
            revoked: false,
            last_used_ms: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, scopes: &[&str], devices: &[&str], expires: Option<&str>) -> TokenSpec {
        TokenSpec {
            name: name.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            devices: devices.iter().map(|s| s.to_string()).collect(),
            expires: expires.map(str::to_owned),
        }
    }

    #[test]
    fn specs_are_validated_with_a_reason() {
        let ok = spec(
            "app-1",
            &["command", "read", "read"],
            &["greenhouse-*"],
            Some("30d"),
        )
        .validate(1000)
        .unwrap();
        assert_eq!(ok.scopes, vec!["read", "command"]);
        assert_eq!(ok.devices, vec!["greenhouse-*"]);
        assert_eq!(ok.expires_ms, Some(1000 + 30 * 86_400_000));
        assert_eq!(
            (ok.created_ms, ok.revoked, ok.last_used_ms),
            (1000, false, None)
        );
        // A century is the longest life; `sync` is a scope.
        let century = spec("a", &["sync"], &[], Some("36500d"))
            .validate(0)
            .unwrap();
        assert_eq!(century.expires_ms, Some(36_500 * 86_400_000));
        assert_eq!(century.scopes, vec!["sync"]);
        assert_eq!(
            spec("a", &["metrics"], &[], None)
                .validate(0)
                .unwrap()
                .expires_ms,
            None
        );

        let long = "x".repeat(65);
        let many: Vec<String> = (0..33).map(|i| format!("d{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        for (bad, field) in [
            (spec("", &["read"], &[], None), "`name`"),
            (spec(&long, &["read"], &[], None), "`name`"),
            (spec("a b", &["read"], &[], None), "`name`"),
            (spec("a", &[], &[], None), "`scopes`"),
            (spec("a", &["write"], &[], None), "`scopes`"),
            (spec("a", &["read"], &[""], None), "`devices`"),
            (spec("a", &["read"], &["door/1"], None), "`devices`"),
            (spec("a", &["read"], &[&long], None), "`devices`"),
            (spec("a", &["read"], &many, None), "`devices`"),
            (spec("a", &["read"], &[], Some("soon")), "`expires`"),
            (spec("a", &["read"], &[], Some("0s")), "`expires`"),
            (spec("a", &["read"], &[], Some("5y")), "`expires`"),
            (spec("a", &["read"], &[], Some("3000000d")), "`expires`"),
            (spec("a", &["read"], &[], Some("36501d")), "`expires`"),
            (
                spec("a", &["read"], &[], Some("99999999999999999999999d")),
                "`expires`",
            ),
            (
                spec("a", &["read"], &[], Some("18446744073709551615ms")),
                "`expires`",
            ),
        ] {
            let e = bad.validate(0).unwrap_err();
            assert!(e.0.starts_with(field), "{bad:?}: {e}");
        }
    }
}
