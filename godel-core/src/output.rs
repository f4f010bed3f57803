//! Task output: the chunks an adapter streams while it runs a task, and the
//! stream each came from. The engine bounds and records them through the
//! store and publishes them as `task.output` events.

use std::str::FromStr;

use crate::InvalidInput;

/// Which stream a piece of task output came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// The agent's standard output (or a model's text).
    Stdout,
    /// The agent's standard error.
    Stderr,
    /// Notes from Godel itself, e.g. "output truncated".
    System,
}

impl OutputStream {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
            OutputStream::System => "system",
        }
    }
}

impl FromStr for OutputStream {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        match s {
            "stdout" => Ok(OutputStream::Stdout),
            "stderr" => Ok(OutputStream::Stderr),
            "system" => Ok(OutputStream::System),
            _ => Err(InvalidInput::new("stream", format!("expected stdout, stderr or system; got {s:?}"))),
        }
    }
}

/// One piece of output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OutputChunk {
    /// Where it came from.
    pub stream: OutputStream,
    /// The text.
    pub data: String,
}
