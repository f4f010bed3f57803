//! `godel-sdk`: the one semver-facing crate. It will hold a typed HTTP and
//! WebSocket client for a Godel server, and an `embed` module that re-exports
//! what a program needs to run orchestration in-process.
//!
//! Today it re-exports the embeddable core: the domain types and the durable
//! task store.
//!
//! ```
//! use godel_sdk::embed::{store, NewTask, Priority, TenantId, Timestamp};
//!
//! # tokio_test_block(async {
//! let store = store::open("memory://").await?;
//! let task = NewTask::command(["echo", "hello"]).priority(Priority::High);
//! let enqueued = store.enqueue(&TenantId::default_tenant(), task, Timestamp::now()).await?;
//! assert!(enqueued.created);
//! # Ok::<_, godel_sdk::embed::StoreError>(())
//! # });
//! # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

/// What a program needs to run Godel in-process: the store and the domain.
pub mod embed {
    pub use godel_core::store::{self, Store, StoreError};
    pub use godel_core::{
        Backoff, NewTask, Priority, Task, TaskError, TaskErrorKind, TaskId, TaskPayload, TaskStatus, TenantId,
        Timestamp,
    };
}
