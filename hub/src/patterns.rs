//! Device and metric id patterns, as tokens, certificates, stream subscriptions and (later)
//! rules name them: `*` matches any run of characters, possibly empty; everything else matches
//! itself. A leaf: every part that selects devices by pattern uses this one.

/// Matches `*` wildcards (any run of characters, possibly empty); everything else literally.
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_shell_stars() {
        assert!(pattern_matches("greenhouse-*", "greenhouse-"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("a*b*c", "a-x-b-y-c"));
        assert!(!pattern_matches("a*b*c", "a-x-c"));
        assert!(!pattern_matches("door-1", "door-10"));
        assert!(!pattern_matches("ab*ba", "aba"));
    }
}
