//! A byte string that must never be shown: signing secrets, shared tokens.

use subtle::ConstantTimeEq;

/// Secret bytes. `Debug` prints `<redacted>`; equality is constant-time.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Secret(bytes.into())
    }

    /// The secret bytes, for handing to a crypto primitive. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = Secret::new(b"hunter2-very-secret".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s, Secret::new(b"hunter2-very-secret".to_vec()));
        assert_ne!(s, Secret::new(b"hunter3-very-secret".to_vec()));
    }
}
