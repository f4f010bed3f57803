//! API keys: `gdl_` followed by 32 random bytes in unpadded base64url (256
//! bits, 47 characters in all). The server shows a key's plaintext once, when
//! it makes it, and keeps only its SHA-256 hash.
//!
//! Requests look keys up through [`KeyCache`], which asks the store at most
//! once per [`FRESH`] for a given hash: a key revoked on another node sharing
//! the store stops working here within that time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use godel_core::store::StoreError;
use godel_core::{ApiKey, KeyHash, KeyId, Store, Timestamp};
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
pub struct NewKey {
    /// The whole key: give it to the user once, then drop it.
    pub plaintext: String,
    /// What the store keeps (`ApiKey::hash`).
    pub hash: KeyHash,
    /// The start of the plaintext, kept to recognise the key in lists (`ApiKey::prefix`).
    pub prefix: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Makes a key from the operating system's random source: what the server
/// does when asked for a key, for tools that put keys straight into the store.
pub fn generate() -> NewKey {
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

/// How long a looked-up key (or its absence) is trusted before the store is
/// asked again.
pub(crate) const FRESH: Duration = Duration::from_secs(4);
/// Most hashes cached; past this the cache starts over, so that guessing
/// keys cannot grow it without bound.
const CACHE_MAX: usize = 100_000;

/// Keys by hash, as the store last said, with when it said so.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    entries: Mutex<HashMap<KeyHash, (Option<ApiKey>, Instant)>>,
    /// Keys that authenticated a request since the last [`KeyCache::take_used`].
    used: Mutex<HashMap<KeyId, Timestamp>>,
}

impl KeyCache {
    /// The key whose plaintext hashes to `hash`, if the store has one.
    pub(crate) async fn get(&self, store: &Arc<dyn Store>, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        if let Some((key, at)) = self.lock().get(hash)
            && at.elapsed() < FRESH
        {
            return Ok(key.clone());
        }
        let key = store.key_by_hash(hash).await?;
        let mut entries = self.lock();
        if entries.len() >= CACHE_MAX {
            entries.clear();
        }
        entries.insert(*hash, (key.clone(), Instant::now()));
        Ok(key)
    }

    /// Forgets every cached key, so that a change this node just made (a
    /// revocation, a rotation) applies to the next request.
    pub(crate) fn invalidate(&self) {
        self.lock().clear();
    }

    /// Notes that `key` authenticated a request at `now`.
    pub(crate) fn used(&self, key: &KeyId, now: Timestamp) {
        self.used.lock().unwrap_or_else(PoisonError::into_inner).insert(*key, now);
    }

    /// The keys used since the last call, for `Credentials::touch_keys`.
    pub(crate) fn take_used(&self) -> Vec<(KeyId, Timestamp)> {
        std::mem::take(&mut *self.used.lock().unwrap_or_else(PoisonError::into_inner)).into_iter().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyHash, (Option<ApiKey>, Instant)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
