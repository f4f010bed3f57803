//! Who is calling, and what they may do. For now: the API key format.

#[allow(dead_code, reason = "the request guard uses the key shape check")]
pub(crate) mod keys;
