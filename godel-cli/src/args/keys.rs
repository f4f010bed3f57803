//! `godel keys`, `godel audit`, `godel login` and `godel logout`: API keys,
//! the audit log, and the credentials this machine keeps per server.

use argh::FromArgs;

/// API keys (admin only): create, list, revoke, rotate.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "keys")]
pub(crate) struct Keys {
    #[argh(subcommand)]
    pub(crate) command: KeysCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum KeysCommand {
    Create(KeysCreate),
    List(KeysList),
    Revoke(KeysRevoke),
    Rotate(KeysRotate),
}

/// Create a key and print its secret, which is shown this once.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "create")]
pub(crate) struct KeysCreate {
    /// a label: 1 to 64 characters from A-Z a-z 0-9 . _ -
    #[argh(option)]
    pub(crate) name: String,
    /// admin, operator, submitter, viewer or worker
    #[argh(option)]
    pub(crate) role: String,
    /// the tenant it acts as (default: the server's default tenant)
    #[argh(option)]
    pub(crate) tenant: Option<String>,
    /// how long it lives, e.g. 30d or 12h (1 minute to 5 years; default: no expiry)
    #[argh(option)]
    pub(crate) expires_in: Option<String>,
    /// print JSON (the key and its secret)
    #[argh(switch)]
    pub(crate) json: bool,
}

/// List keys, newest first.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub(crate) struct KeysList {
    /// only this tenant's keys
    #[argh(option)]
    pub(crate) tenant: Option<String>,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Revoke a key: it never authenticates again.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "revoke")]
pub(crate) struct KeysRevoke {
    /// the key's id, as `godel keys list` prints it
    #[argh(positional)]
    pub(crate) id: String,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Replace a key with a new one of the same name, tenant and role; the old
/// one keeps working for the grace period, then expires.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rotate")]
pub(crate) struct KeysRotate {
    /// the key's id, as `godel keys list` prints it
    #[argh(positional)]
    pub(crate) id: String,
    /// how long the old key keeps working, 0s to 30d (default 1h)
    #[argh(option, default = "String::from(\"1h\")")]
    pub(crate) grace: String,
    /// print JSON (the new key, its secret and the old key)
    #[argh(switch)]
    pub(crate) json: bool,
}

/// The audit log (admin only), newest first: every mutating request and
/// every refused one.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "audit")]
pub(crate) struct Audit {
    /// an action (tasks.create) or a prefix ending in a dot (tasks.)
    #[argh(option)]
    pub(crate) action: Option<String>,
    /// allowed, denied or failed
    #[argh(option)]
    pub(crate) outcome: Option<String>,
    /// only this tenant's entries
    #[argh(option)]
    pub(crate) tenant: Option<String>,
    /// only entries made with this key id (or jwt:<subject>)
    #[argh(option)]
    pub(crate) credential: Option<String>,
    /// only entries at or after this time (RFC 3339) or this long ago (1h)
    #[argh(option)]
    pub(crate) since: Option<String>,
    /// how many (1 to 100, default 20)
    #[argh(option, short = 'n')]
    pub(crate) limit: Option<usize>,
    /// continue after a previous page (the cursor `--json` printed)
    #[argh(option)]
    pub(crate) cursor: Option<String>,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Save an API key for a server in ~/.config/godel/credentials.toml (mode
/// 0600), after checking it against the server. The key is read from
/// standard input unless --with-token gives it.
#[derive(FromArgs)]
#[argh(subcommand, name = "login")]
pub(crate) struct Login {
    /// the server (else the global --server, GODEL_SERVER, ./godel.toml)
    #[argh(option)]
    pub(crate) server: Option<String>,
    /// the key itself (visible to other users in the process list; prefer standard input)
    #[argh(option)]
    pub(crate) with_token: Option<String>,
}

/// Forget the key saved for a server.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "logout")]
pub(crate) struct Logout {
    /// the server (else the global --server, GODEL_SERVER, ./godel.toml)
    #[argh(option)]
    pub(crate) server: Option<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("server", &self.server)
            .field("with_token", &self.with_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
