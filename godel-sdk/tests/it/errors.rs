//! How failures reach the caller: API errors keep the server's code and
//! status; transport failures name the URL tried; bad base URLs are refused
//! before any request; timeouts come from `ClientOptions`.

use std::time::Duration;

use anyhow::Result;
use godel_sdk::embed::TaskId;
use godel_sdk::{Client, ClientOptions, Error, ErrorCode, ListSessions, ListTasks, RegisterAgent, SubmitTask};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::TestServer;

fn api(err: &Error) -> (u16, ErrorCode, bool) {
    match err {
        Error::Api { status, code, retryable, .. } => (*status, code.clone(), *retryable),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_ids_are_not_found() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let unknown = TaskId::new();
    let not_found = (404, ErrorCode::NotFound, false);
    assert_eq!(api(&client.task(unknown).await.unwrap_err()), not_found);
    assert_eq!(api(&client.cancel(unknown).await.unwrap_err()), not_found);
    assert_eq!(api(&client.kill(unknown).await.unwrap_err()), not_found);
    assert_eq!(api(&client.retry(unknown).await.unwrap_err()), not_found);
    assert_eq!(api(&client.purge(unknown).await.unwrap_err()), not_found);
    assert_eq!(api(&client.task_events(unknown).await.unwrap_err()), not_found);
    assert_eq!(api(&client.replay_dead_letter(unknown).await.unwrap_err()), not_found);
    assert_eq!(api(&client.session(godel_sdk::embed::SessionId::new()).await.unwrap_err()), not_found);
    assert_eq!(api(&client.terminate_session(godel_sdk::embed::SessionId::new()).await.unwrap_err()), not_found);

    let err = client.task(unknown).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::NotFound));
    assert!(!err.is_retryable());
    assert!(matches!(&err, Error::Api { message, .. } if !message.is_empty()));
    server.stop().await
}

#[tokio::test]
async fn bad_requests_are_invalid_requests() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let invalid = (400, ErrorCode::InvalidRequest, false);
    let empty_command = SubmitTask::command(Vec::<String>::new());
    assert_eq!(api(&client.submit(&empty_command).await.unwrap_err()), invalid);
    assert_eq!(api(&client.submit(&SubmitTask::prompt("x").max_attempts(0)).await.unwrap_err()), invalid);
    assert_eq!(api(&client.submit(&SubmitTask::prompt("x").timeout(Duration::ZERO)).await.unwrap_err()), invalid);
    assert_eq!(api(&client.submit(&SubmitTask::prompt("x").capability("Not Valid")).await.unwrap_err()), invalid);
    assert_eq!(api(&client.submit_batch(&[]).await.unwrap_err()), invalid);
    let too_big = ListTasks { limit: Some(101), ..ListTasks::default() };
    assert_eq!(api(&client.tasks(&too_big).await.unwrap_err()), invalid);
    let zero = ListTasks { limit: Some(0), ..ListTasks::default() };
    assert_eq!(api(&client.dead_letters(&zero).await.unwrap_err()), invalid);
    let garbage = ListTasks { cursor: Some("not a cursor".into()), ..ListTasks::default() };
    assert_eq!(api(&client.tasks(&garbage).await.unwrap_err()), invalid);
    let sessions = ListSessions { limit: Some(0), ..ListSessions::default() };
    assert_eq!(api(&client.sessions(&sessions).await.unwrap_err()), invalid);
    let zero_timeout = RegisterAgent { id: "x".into(), default_timeout_ms: Some(0), ..RegisterAgent::default() };
    assert_eq!(api(&client.register_agent(&zero_timeout).await.unwrap_err()), invalid);
    server.stop().await
}

#[tokio::test]
async fn a_closed_port_is_unreachable_and_names_the_url() -> Result<()> {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        listener.local_addr()?.port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new(&base)?;
    let err = client.task(TaskId::new()).await.unwrap_err();
    match &err {
        Error::Unreachable { url, .. } => assert!(url.starts_with(&format!("{base}/api/v1/tasks/")), "{url}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert_eq!(err.code(), None);
    assert!(std::error::Error::source(&err).is_some(), "the transport error rides along");
    let err = client.health().await.unwrap_err();
    assert!(matches!(&err, Error::Unreachable { url, .. } if *url == format!("{base}/health")), "{err:?}");
    Ok(())
}

#[test]
fn invalid_base_urls_are_refused_up_front() {
    for url in ["", "localhost:7373", "ftp://example.com", "http://", "https://", "http://exa mple.com", "ws://x:1"] {
        match Client::new(url) {
            Err(Error::InvalidUrl { url: given, .. }) => assert_eq!(given, url),
            other => panic!("{url:?}: expected InvalidUrl, got {other:?}"),
        }
    }
    let client = Client::new("https://godel.example.com:8443/").expect("a valid URL");
    assert_eq!(client.base_url(), "https://godel.example.com:8443", "a trailing slash is dropped");
    assert_eq!(Client::new(godel_sdk::DEFAULT_SERVER).expect("valid").base_url(), "http://127.0.0.1:7373");
}

#[tokio::test]
async fn a_server_that_does_not_answer_times_out() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let options = ClientOptions { timeout: Duration::from_millis(200), ..ClientOptions::default() };
    let client = Client::with_options(&base, options)?;
    // Accept the connection and hold it, saying nothing.
    let (accepted, answer) = tokio::join!(listener.accept(), client.queue_depth());
    let _held = accepted?;
    let err = answer.unwrap_err();
    assert!(matches!(&err, Error::Timeout { url } if *url == format!("{base}/api/v1/queue/depth")), "{err:?}");
    assert!(err.is_retryable());
    Ok(())
}

#[tokio::test]
async fn an_answer_without_the_error_envelope_is_a_protocol_error() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let client = Client::new(&base)?;
    for response in [
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 12\r\n\r\n<h1>bad</h1>",
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\nnot json!",
    ] {
        let serve = async {
            let (mut socket, _) = listener.accept().await?;
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await?;
            socket.write_all(response.as_bytes()).await?;
            socket.shutdown().await?;
            anyhow::Ok(socket)
        };
        let (served, answer) = tokio::join!(serve, client.queue_depth());
        served?;
        let err = answer.unwrap_err();
        assert!(matches!(&err, Error::Protocol { url, .. } if url.starts_with(&base)), "{err:?}");
    }
    Ok(())
}

#[test]
fn error_codes_read_as_the_api_writes_them() {
    let codes = [
        (ErrorCode::InvalidRequest, "invalid_request"),
        (ErrorCode::Unauthorized, "unauthorized"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::Conflict, "conflict"),
        (ErrorCode::RateLimited, "rate_limited"),
        (ErrorCode::InternalError, "internal_error"),
        (ErrorCode::ServiceUnavailable, "service_unavailable"),
        (ErrorCode::Other("teapot".into()), "teapot"),
    ];
    for (code, text) in codes {
        assert_eq!((code.as_str(), code.to_string()), (text, text.to_owned()));
    }
}
