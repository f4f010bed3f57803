//! API keys through the SDK: the client sends its key as
//! `Authorization: Bearer` on requests and on the `/events` handshake and
//! never shows it in `Debug`; the key and audit calls round-trip.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use godel_sdk::{AuditOutcome, Client, CreateKey, Error, ErrorCode, ListAudit, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::TestServer;

/// The server's first admin key.
fn admin_key(server: &TestServer) -> Result<String> {
    Ok(std::fs::read_to_string(server.dir().join("state").join("admin.key"))?.trim().to_owned())
}

/// Accepts one connection, answers `response` and returns the request's head.
async fn capture(listener: TcpListener, response: String) -> Result<String> {
    let (mut socket, _) = listener.accept().await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    socket.write_all(response.as_bytes()).await?;
    Ok(String::from_utf8_lossy(&head).to_ascii_lowercase())
}

#[tokio::test]
async fn the_key_goes_in_the_authorization_header_and_never_in_debug() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let client = Client::new(&url)?.with_api_key("gdl_secret-for-the-test\n")?;
    assert!(client.has_api_key());
    assert!(!format!("{client:?}").contains("secret-for-the-test"), "{client:?}");
    let body = r#"{"critical":0,"high":0,"medium":0,"low":0,"total":0}"#;
    let response =
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    let (head, depth) = tokio::join!(capture(listener, response), client.queue_depth());
    depth?;
    assert!(head?.contains("authorization: bearer gdl_secret-for-the-test\r\n"));

    // The events handshake carries it too.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let client = Client::new(&format!("http://{}", listener.local_addr()?))?.with_api_key("gdl_events-key")?;
    let mut events = client.events(&["task.*"]);
    let (head, first) = tokio::join!(
        capture(listener, "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_owned()),
        tokio::time::timeout(Duration::from_secs(5), events.next())
    );
    let head = head?;
    assert!(head.starts_with("get /events"), "{head}");
    assert!(head.contains("authorization: bearer gdl_events-key\r\n"), "{head}");

    // A refused handshake ends the stream with the API's code.
    let refused = first?.expect("an item").unwrap_err();
    assert_eq!(refused.code(), Some(&ErrorCode::Unauthorized), "{refused:?}");
    assert!(events.next().await.is_none());

    // A key a header cannot carry is refused before any request.
    assert!(matches!(Client::new(&url)?.with_api_key("gdl_a\nb"), Err(Error::InvalidApiKey { .. })));
    Ok(())
}

#[tokio::test]
async fn keys_are_created_listed_rotated_and_revoked() -> Result<()> {
    let mut server = TestServer::start().await?;
    let admin = Client::new(&server.url())?.with_api_key(admin_key(&server)?)?;
    let request = CreateKey { name: "ci".into(), role: Role::Submitter, tenant: None, expires_in: Some("30d".into()) };
    let created = admin.create_key(&request).await?;
    assert!(created.secret.starts_with(&created.key.prefix));
    assert!(!format!("{created:?}").contains(&created.secret));
    assert_eq!((created.key.role, created.key.tenant.as_str()), (Role::Submitter, "default"));
    assert!(created.key.expires_at.is_some());

    let keys = admin.keys(None).await?;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0].id, created.key.id);
    assert!(admin.keys(Some("other")).await?.is_empty());
    assert_eq!(admin.key(created.key.id).await?, created.key);

    // The new key works as a client's credential.
    let ci = Client::new(&server.url())?.with_api_key(&created.secret)?;
    ci.queue_depth().await?;

    let rotated = admin.rotate_key(created.key.id, Duration::from_secs(3_600)).await?;
    assert_eq!((rotated.key.name.as_str(), rotated.previous.id), ("ci", created.key.id));
    assert!(rotated.previous.expires_at < created.key.expires_at);
    let revoked = admin.revoke_key(rotated.key.id).await?;
    assert!(revoked.revoked_at.is_some());

    let bad = CreateKey { name: "bad name".into(), ..request };
    let err = admin.create_key(&bad).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidRequest));
    let err = admin.revoke_key(godel_sdk::KeyId::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::NotFound));

    // The audit log answers a page, filters included.
    let query = ListAudit { outcome: Some(AuditOutcome::Denied), limit: Some(5), ..ListAudit::default() };
    let page = admin.audit(&query).await?;
    assert!(page.items.iter().all(|e| e.outcome == AuditOutcome::Denied));
    let err = admin.audit(&ListAudit { limit: Some(0), ..ListAudit::default() }).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidRequest));
    server.stop().await?;
    Ok(())
}
