//! Decoding what the SQL backends read back. A value that does not decode
//! means something else wrote to the database: the row is corrupt, and the
//! error says which backend and which column.

use std::str::FromStr;

use crate::InvalidInput;
use crate::store::{Result, StoreError};
use crate::task::Priority;

/// The decoding helpers of one backend, named by it in errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows(pub(crate) &'static str);

impl Rows {
    /// A row that does not decode.
    pub(crate) fn corrupt(self, message: impl Into<String>) -> StoreError {
        StoreError::Backend { backend: self.0, source: format!("corrupt row: {}", message.into()).into() }
    }

    /// Any other failure of this backend, e.g. a value that does not encode.
    pub(crate) fn error(self, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Backend { backend: self.0, source: Box::new(e) }
    }

    /// A driver error: [`StoreError::Unavailable`] if `transient` (retrying
    /// may succeed), else [`StoreError::Backend`].
    pub(crate) fn driver(self, e: sqlx::Error, transient: bool) -> StoreError {
        if transient { StoreError::Unavailable { backend: self.0, source: Box::new(e) } } else { self.error(e) }
    }

    /// A JSON text column.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(self, value: &str, column: &str) -> Result<T> {
        serde_json::from_str(value).map_err(|e| self.corrupt(format!("column {column} holds invalid JSON: {e}")))
    }

    /// A priority stored as its rank.
    pub(crate) fn priority(self, rank: i64) -> Result<Priority> {
        u8::try_from(rank)
            .ok()
            .and_then(Priority::from_rank)
            .ok_or_else(|| self.corrupt(format!("priority rank {rank} is out of range")))
    }

    /// A column holding something with a validating `FromStr` (ids, statuses, …).
    pub(crate) fn parse<T: FromStr<Err = InvalidInput>>(self, value: &str, column: &str) -> Result<T> {
        value.parse().map_err(|e: InvalidInput| self.corrupt(format!("column {column}: {e}")))
    }
}
