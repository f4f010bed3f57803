//! Godel's device identity on OpenClaw gateways: one Ed25519 key pair per
//! installation, created once and kept in the state directory.
//!
//! Gateways pair devices, not connections: a changing key means asking an
//! operator to approve Godel again. So the key is written once, atomically
//! (a temporary file hard-linked into place, which fails if another process
//! won the race), with mode 0600, and a file that is readable by others or
//! does not hold a valid key is refused with an error saying what is wrong
//! rather than silently replaced.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

/// The key file's name inside the state directory.
pub const DEVICE_KEY_FILE: &str = "openclaw-device.json";

/// A device identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// Reading or writing the key file failed.
    #[error("cannot {action} the OpenClaw device key {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file exists but is unusable.
    #[error("the OpenClaw device key {path} is unusable: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// An Ed25519 device identity.
#[derive(Clone)]
pub struct DeviceIdentity {
    key: SigningKey,
    /// The state directory it was loaded from; device tokens are kept beside it.
    dir: Option<PathBuf>,
    id: String,
    public_key: String,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret key.
        f.debug_struct("DeviceIdentity").field("id", &self.id).finish_non_exhaustive()
    }
}

impl DeviceIdentity {
    /// A fresh identity kept only in memory (tests, benchmarks).
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self::from_secret(&bytes)
    }

    fn from_secret(secret: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(secret);
        let public = key.verifying_key().to_bytes();
        let id = hex(&Sha256::digest(public));
        Self { key, dir: None, id, public_key: URL_SAFE_NO_PAD.encode(public) }
    }

    /// Loads the identity from `<state_dir>/openclaw-device.json`, creating
    /// the directory and the key on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, DeviceError> {
        let path = state_dir.join(DEVICE_KEY_FILE);
        let found = Self::load(&path).map(|mut d| {
            d.dir = Some(state_dir.to_owned());
            d
        });
        match found {
            Err(DeviceError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        std::fs::create_dir_all(state_dir).map_err(|source| DeviceError::Io {
            action: "create the directory of",
            path: path.clone(),
            source,
        })?;
        let mut identity = Self::generate();
        identity.dir = Some(state_dir.to_owned());
        let body = serde_json::json!({
            "version": 1,
            "deviceId": identity.id,
            "secretKey": URL_SAFE_NO_PAD.encode(identity.key.to_bytes()),
        });
        let tmp = state_dir.join(format!(".{DEVICE_KEY_FILE}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let write = || -> std::io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(body.to_string().as_bytes())?;
            file.sync_all()?;
            // A hard link fails if the name exists: whoever linked first wins.
            std::fs::hard_link(&tmp, &path)
        };
        let linked = write();
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(identity),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut d = Self::load(&path)?;
                d.dir = Some(state_dir.to_owned());
                Ok(d)
            }
            Err(source) => Err(DeviceError::Io { action: "create", path, source }),
        }
    }

    fn load(path: &Path) -> Result<Self, DeviceError> {
        let invalid = |reason: String| DeviceError::Invalid { path: path.to_owned(), reason };
        let meta = std::fs::metadata(path).map_err(|source| DeviceError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(invalid(format!(
                    "its permissions are {mode:o}; it holds a secret key and must be readable by its owner only \
                     (chmod 600 {})",
                    path.display()
                )));
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(|source| DeviceError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(format!("expected a JSON object: {e}")))?;
        let secret = v
            .get("secretKey")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| invalid("expected a string field secretKey".to_owned()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|e| invalid(format!("secretKey is not base64url without padding: {e}")))?;
        let bytes: [u8; 32] =
            bytes.try_into().map_err(|b: Vec<u8>| invalid(format!("secretKey must be 32 bytes, got {}", b.len())))?;
        let identity = Self::from_secret(&bytes);
        if let Some(id) = v.get("deviceId").and_then(serde_json::Value::as_str)
            && id != identity.id
        {
            return Err(invalid("deviceId does not match the key".to_owned()));
        }
        Ok(identity)
    }

    /// The device id: lowercase hex SHA-256 of the raw public key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw public key, base64url without padding.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Signs `payload`; the signature is base64url without padding.
    pub(crate) fn sign(&self, payload: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.key.sign(payload.as_bytes()).to_bytes())
    }
}

/// The device token a gateway issued, kept (0600) beside the key so that a
/// restarted Godel presents it again; `None` without a state directory.
pub(crate) fn load_token(device: &DeviceIdentity, gateway: &str) -> Option<String> {
    let path = device.dir.as_ref()?.join(format!("openclaw-token-{gateway}.json"));
    let text = std::fs::read_to_string(&path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("deviceToken").and_then(serde_json::Value::as_str).map(str::to_owned)
}

/// Keeps a device token (written to a temporary file, then renamed).
pub(crate) fn store_token(device: &DeviceIdentity, gateway: &str, token: &str) {
    let Some(dir) = &device.dir else { return };
    let path = dir.join(format!("openclaw-token-{gateway}.json"));
    let tmp = dir.join(format!(".openclaw-token-{gateway}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(serde_json::json!({ "deviceToken": token }).to_string().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(gateway, path = %path.display(), error = %e, "cannot keep the gateway's device token");
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceIdentity::load_or_create(dir.path()).unwrap();
        let b = DeviceIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id().len(), 64);
        assert_eq!(load_token(&a, "g"), None);
        store_token(&a, "g", "tok-1");
        assert_eq!(load_token(&b, "g").as_deref(), Some("tok-1"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(DEVICE_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn loose_permissions_and_bad_content_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        DeviceIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(DEVICE_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(DeviceIdentity::load_or_create(dir.path()), Err(DeviceError::Invalid { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "{\"secretKey\":\"AAAA\"}").unwrap();
        let err = DeviceIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, DeviceError::Invalid { .. }), "{err}");
    }
}
