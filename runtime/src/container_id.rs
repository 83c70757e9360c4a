//! The one rule for container ids, shared by the runtime, the guest agent and the host
//! controller: runc's (letters, digits, `_`, `.`, `+`, `-`; not `.` or `..`), bounded in length.

/// Longest id accepted (the agent's stdio frames carry ids up to the same bound).
pub const MAX_LEN: usize = 1024;

/// An id that breaks the rule; displayed as one line naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid container id {0:?}: use 1 to 1024 letters, digits, '_', '.', '+', '-' (not '.' or '..')")]
pub struct InvalidId(pub String);

/// Checks `id` against the rule.
pub fn validate(id: &str) -> Result<(), InvalidId> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= MAX_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(InvalidId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_characters_are_accepted_and_paths_are_not() {
        assert_eq!(validate("c1.a_b+c-d"), Ok(()));
        assert!(validate(&"a".repeat(MAX_LEN)).is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "a b", "é"] {
            assert_eq!(validate(bad), Err(InvalidId(bad.into())), "{bad:?}");
        }
        assert!(validate(&"a".repeat(MAX_LEN + 1)).is_err());
    }
}
