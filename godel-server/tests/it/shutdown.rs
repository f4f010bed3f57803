//! Shutdown in the face of clients that do not cooperate.

use crate::support::TestServer;

/// A client that opens a connection and never sends a request cannot hold
/// the server's shutdown: the HTTP drain is bounded.
#[tokio::test]
async fn an_idle_connection_does_not_hold_shutdown() {
    let server = TestServer::start("").await;
    let addr = server.url("").trim_start_matches("http://").to_owned();
    let _idle = tokio::net::TcpStream::connect(&addr).await.expect("a connection");
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "stopped in {:?}", started.elapsed());
}
