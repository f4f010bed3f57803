//! Helpers shared by the end-to-end tests and the helper binaries they spawn.
//!
//! The tests live in `it/` (one integration binary); the helper processes live
//! in `src/bin/`. What both sides of a process boundary must agree on, such as
//! the line protocol of `godel-store-child`, lives here so that it is written
//! once.

pub mod store_child;
