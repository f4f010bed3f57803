//! API keys: `gdl_` followed by 32 random bytes in unpadded base64url (256
//! bits, 47 characters in all). The server shows a key's plaintext once, when
//! it makes it, and keeps only its SHA-256 hash.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use godel_core::KeyHash;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What every key starts with, so that a secret scanner (or a person) can
/// recognise one.
pub(crate) const PREFIX: &str = "gdl_";
/// How many characters of a key lists show: the prefix and eight more.
const SHOWN: usize = PREFIX.len() + 8;
/// The length of a key's plaintext.
const LENGTH: usize = PREFIX.len() + 43;

/// A freshly made key. `Debug` does not show the plaintext.
pub(crate) struct NewKey {
    /// The whole key: give it to the user once, then drop it.
    pub(crate) plaintext: String,
    pub(crate) hash: KeyHash,
    /// The start of the plaintext, kept to recognise the key in lists.
    pub(crate) prefix: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Makes a key from the operating system's random source.
pub(crate) fn generate() -> NewKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let plaintext = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    NewKey { hash: hash(&plaintext), prefix: plaintext[..SHOWN].to_owned(), plaintext }
}

/// The hash a key is stored and looked up under.
pub(crate) fn hash(plaintext: &str) -> KeyHash {
    KeyHash(Sha256::digest(plaintext.as_bytes()).into())
}

/// Whether a bearer token has the shape of one of our keys (as opposed to a
/// JWT). Only the shape: whether it exists is the store's to say.
pub(crate) fn looks_like_key(token: &str) -> bool {
    token.len() == LENGTH
        && token.starts_with(PREFIX)
        && token[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_recognisable() {
        let a = generate();
        let b = generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(looks_like_key(&a.plaintext), "{}", a.plaintext);
        assert_eq!(hash(&a.plaintext), a.hash);
        assert!(a.plaintext.starts_with(&a.prefix));
        assert!(!format!("{a:?}").contains(&a.plaintext));
        assert!(!looks_like_key("gdl_short"));
        assert!(!looks_like_key(&format!("gdl_{}", "!".repeat(43))));
    }
}
