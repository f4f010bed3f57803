//! Runnable examples of embedding Godel live beside this file; see `queue_tour.rs`.
