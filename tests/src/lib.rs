//! Helpers shared by the end-to-end tests and the helper binaries they spawn.
//!
//! The tests live in `it/` (one integration binary); the helper processes live
//! in `src/bin/`. What both sides of a process boundary must agree on, such as
//! the line protocols of `godel-store-child` and `godel-engine-child`, lives
//! here so that it is written once; so does the TCP proxy that the chaos
//! tests break connections with.

pub mod engine_child;
pub mod proxy;
pub mod store_child;
