//! The Lua scripts the store runs, each loaded once with `lib.lua` in front.

use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis;

use crate::store::Result;
use crate::store::redis::{pool_err, timed};

/// One Lua script: its source (with `lib.lua` in front) and its SHA1 as the
/// server reported it when the script was loaded.
#[derive(Debug)]
pub(super) struct Script {
    pub(super) body: String,
    pub(super) sha: String,
}

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        /// Every script the store runs.
        #[derive(Debug)]
        pub(super) struct Scripts {
            $(pub(super) $name: Script,)*
        }

        impl Scripts {
            /// Loads every script into the server's script cache.
            pub(super) async fn load(pool: &Pool, timeout: Duration) -> Result<Self> {
                Ok(Self {
                    $($name: {
                        let body = format!(
                            "{}\n{}",
                            include_str!("lib.lua"),
                            include_str!(concat!(stringify!($name), ".lua"))
                        );
                        let sha = load_script(pool, &body, timeout).await?;
                        Script { body, sha }
                    },)*
                })
            }
        }
    };
}

scripts!(
    enqueue,
    claim,
    write,
    heartbeat,
    output,
    fail,
    release,
    confirm_cancel,
    cancel,
    reclaim,
    replay,
    purge,
    list,
    quarantine,
    counts,
    sessions,
    keys,
    audit,
);

/// A call of `script`, to which the caller adds the script's arguments.
pub(super) fn call(script: &Script) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&script.sha).arg(0);
    cmd
}

/// Loads a script into the server's cache and returns its SHA1.
pub(super) async fn load_script(pool: &Pool, body: &str, timeout: Duration) -> Result<String> {
    let mut conn = pool.get().await.map_err(pool_err)?;
    timed(timeout, redis::cmd("SCRIPT").arg("LOAD").arg(body).query_async::<String>(&mut conn)).await
}
