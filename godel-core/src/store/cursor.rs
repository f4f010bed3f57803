//! Opaque pagination cursors.
//!
//! A cursor encodes the sort order and the sequence number of the last task on
//! the previous page. Pages are keyed on the store's insertion sequence, so a
//! task inserted while someone pages through appears after every cursor
//! (ascending) or before them all (descending): a listing never skips or
//! repeats a task.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::InvalidInput;

/// Which end of the queue a listing starts from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum SortOrder {
    /// Oldest first (`created_at`).
    #[default]
    Ascending,
    /// Newest first (`-created_at`).
    Descending,
}

/// Where a page ended; opaque to callers.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    pub(crate) fn after(order: SortOrder, seq: i64) -> Self {
        let tag = match order {
            SortOrder::Ascending => 'a',
            SortOrder::Descending => 'd',
        };
        Cursor(URL_SAFE_NO_PAD.encode(format!("v1:{tag}:{seq}")))
    }

    /// The sequence number the page starts after, checking the cursor was
    /// made for the same sort order.
    pub(crate) fn position(&self, order: SortOrder) -> Result<i64, InvalidInput> {
        let (tag, seq) =
            decode(&self.0).ok_or_else(|| InvalidInput::new("cursor", "not a cursor returned by a listing"))?;
        let expected = match order {
            SortOrder::Ascending => 'a',
            SortOrder::Descending => 'd',
        };
        if tag != expected {
            return Err(InvalidInput::new("cursor", "made for the other sort order"));
        }
        Ok(seq)
    }

    /// The cursor as a string, to hand to a client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn decode(s: &str) -> Option<(char, i64)> {
    let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let rest = text.strip_prefix("v1:")?;
    let (tag, seq) = rest.split_once(':')?;
    let tag = match tag {
        "a" => 'a',
        "d" => 'd',
        _ => return None,
    };
    Some((tag, seq.parse().ok()?))
}

impl FromStr for Cursor {
    type Err = InvalidInput;

    /// Accepts only well-formed cursors.
    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        decode(s)
            .map(|_| Cursor(s.to_owned()))
            .ok_or_else(|| InvalidInput::new("cursor", "not a cursor returned by a listing"))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let c = Cursor::after(SortOrder::Descending, 42);
        let parsed: Cursor = c.as_str().parse().unwrap();
        assert_eq!(parsed.position(SortOrder::Descending).unwrap(), 42);
        assert_eq!(parsed.position(SortOrder::Ascending).unwrap_err().field, "cursor");
        assert!("garbage!".parse::<Cursor>().is_err());
        assert!(URL_SAFE_NO_PAD.encode("v1:x:1").parse::<Cursor>().is_err());
    }
}
