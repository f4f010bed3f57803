//! How a command ends, as the user sees it: an exit code from [`Exit`], and
//! for a failure one line saying what went wrong and what to do. SDK errors
//! become failures here, in one place, so every command reports an
//! unreachable server or a missing task the same way.

use godel_sdk::{Error as SdkError, ErrorCode};

/// The exit codes of `godel`, as documented in docs/cli.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// The command did what it was asked.
    Success = 0,
    /// The task did not complete (`--wait`, `do`), `doctor` found problems,
    /// or a gateway takes no work (`instances health`).
    Failed = 1,
    /// Bad command line: unknown flag, bad value, bad task id.
    Usage = 2,
    /// The server could not be reached, or did not answer in time.
    Unreachable = 3,
    /// No such task, agent, session or gateway.
    NotFound = 4,
    /// The server refused the request: invalid, or in conflict with the
    /// task's state.
    Refused = 5,
    /// The server failed or answered something unexpected, or a local
    /// resource (a file, the runtime, a signal handler) failed.
    Internal = 6,
    /// The server did not accept the credential (401), or the credential's
    /// role may not do this (403).
    Unauthorized = 7,
    /// Interrupted by Ctrl-C (or, for a draining worker, a second signal).
    Interrupted = 130,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit as u8)
    }
}

/// A failure, as the user sees it: one line and an exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message)
    }

    pub(crate) fn io(what: &str, e: &std::io::Error) -> Self {
        Self::new(Exit::Internal, format!("{what}: {e}"))
    }
}

impl From<SdkError> for Failure {
    fn from(e: SdkError) -> Self {
        match &e {
            SdkError::Unreachable { url, .. } => Failure::new(
                Exit::Unreachable,
                format!(
                    "cannot reach the Godel server at {}; start one with `godel serve`, or point --server or GODEL_SERVER at it",
                    base_of(url)
                ),
            ),
            SdkError::Timeout { url } => Failure::new(
                Exit::Unreachable,
                format!("the Godel server at {} did not answer in time; is it overloaded?", base_of(url)),
            ),
            SdkError::Api { code: ErrorCode::NotFound, message, .. } => Failure::new(Exit::NotFound, message.clone()),
            SdkError::Api { code: ErrorCode::InvalidRequest | ErrorCode::Conflict, message, .. } => {
                Failure::new(Exit::Refused, message.clone())
            }
            SdkError::Api { code: ErrorCode::Unauthorized | ErrorCode::Forbidden, message, .. } => {
                Failure::new(Exit::Unauthorized, message.clone())
            }
            SdkError::InvalidUrl { .. } | SdkError::InvalidApiKey { .. } => Failure::usage(e.to_string()),
            _ => Failure::new(Exit::Internal, e.to_string()),
        }
    }
}

pub(crate) type CliResult<T = ()> = Result<T, Failure>;

/// `http://host:port` of a request URL.
fn base_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use crate::exit::base_of;

    #[test]
    fn base_of_keeps_scheme_host_and_port() {
        assert_eq!(base_of("http://127.0.0.1:7373/api/v1/tasks"), "http://127.0.0.1:7373");
        assert_eq!(base_of("http://127.0.0.1:7373"), "http://127.0.0.1:7373");
    }
}
