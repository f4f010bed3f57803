//! The first start: a store without any key gets an admin key, whose secret
//! goes to `<state_dir>/admin.key` (mode 0600, in a directory made 0700) and
//! nowhere else, so that the CLI on this machine can talk to the server with
//! no setup step. The log names the file, never the key.
//!
//! Several servers may start at once on one store. Each one that finds no
//! key makes at most one; servers sharing a state directory agree on its
//! file (it is linked into place whole, never overwritten), and a second
//! record of the same key is refused by the store's unique hash, which is
//! fine here.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use godel_core::store::StoreError;
use godel_core::{ApiKey, KeyId, Role, Store, TenantId, Timestamp};

use crate::auth::keys;

/// The file the first admin key is written to, in the state directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// Makes the first admin key when the store has none; returns the file
/// holding it when it did.
pub(crate) async fn admin_key(
    store: &Arc<dyn Store>,
    state_dir: &Path,
    tenant: &TenantId,
) -> anyhow::Result<Option<PathBuf>> {
    if store.has_keys().await.context("cannot read the store's API keys")? {
        return Ok(None);
    }
    let path = state_dir.join(ADMIN_KEY_FILE);
    let plaintext = match read_key(&path)? {
        Some(existing) => existing,
        None => write_new(&path)?,
    };
    let key = ApiKey {
        id: KeyId::new(),
        name: "admin".to_owned(),
        tenant: tenant.clone(),
        role: Role::Admin,
        hash: keys::hash(&plaintext),
        prefix: plaintext.chars().take(12).collect(),
        created_at: Timestamp::now(),
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    match store.create_key(&key).await {
        // Another server starting on this store recorded the same key first.
        Ok(()) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e).context("cannot store the first admin key"),
    }
    tracing::info!(path = %path.display(), "no API key in the store: made an admin key, written to this file (mode 0600)");
    Ok(Some(path))
}

/// The key in `path`, if the file exists; an error if it holds something else.
fn read_key(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let key = text.trim();
            if !keys::looks_like_key(key) {
                anyhow::bail!(
                    "{} exists but does not hold a Godel API key; move it away so that the server can write its first admin key there",
                    path.display()
                );
            }
            Ok(Some(key.to_owned()))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a fresh key to `path`, whole or not at all: a 0600 temporary file
/// linked into place, which fails if the file appeared meanwhile (another
/// server got there first, and its key is the one to use).
fn write_new(path: &Path) -> anyhow::Result<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let made = keys::generate();
    let temporary = dir.join(format!(".{ADMIN_KEY_FILE}.{}", KeyId::new()));
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
        file.write_all(format!("{}\n", made.plaintext).as_bytes())?;
        file.sync_all()?;
        fs::hard_link(&temporary, path)
    })();
    let _ = fs::remove_file(&temporary);
    match written {
        Ok(()) => Ok(made.plaintext),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_key(path)?.with_context(|| format!("{} vanished while it was read", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}
