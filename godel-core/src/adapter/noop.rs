//! An adapter that completes every task at once with a `null` result: for
//! measuring the engine's own overhead, and for tests of scheduling.

use async_trait::async_trait;
use serde_json::Value;

use crate::adapter::{AbortMode, Adapter, AdapterError, AgentSession, Outcome, OutputSink};
use crate::task::Task;

/// Completes every task immediately.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopAdapter;

#[async_trait]
impl Adapter for NoopAdapter {
    async fn open_session(&self, _task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        Ok(Box::new(NoopSession))
    }

    async fn health(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}

struct NoopSession;

#[async_trait]
impl AgentSession for NoopSession {
    async fn run(&self, _task: &Task, _output: OutputSink) -> Outcome {
        Outcome::Completed { result: Value::Null }
    }

    async fn abort(&self, _mode: AbortMode) {}

    async fn close(&self, _outcome: &Outcome) {}
}
