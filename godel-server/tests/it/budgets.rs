//! A tenant past its hard budget: the server refuses new tasks with 403
//! `forbidden`, a message naming the tenant, the spend and the limit, and
//! `retryable: false`. A hard budget of zero refuses from the first task,
//! which provokes the refusal without spending anything.

use serde_json::{Value, json};

use crate::support::TestServer;

#[tokio::test]
async fn past_the_hard_budget_submits_are_forbidden() {
    let server = TestServer::start("[budgets]\ndefault = { hard = 0 }\n").await;
    let http = reqwest::Client::new();
    for (path, body) in [
        ("/api/v1/tasks", json!({"command": ["true"]})),
        ("/api/v1/tasks/batch", json!({"tasks": [{"command": ["true"]}]})),
    ] {
        let response = http.post(server.url(path)).json(&body).send().await.expect("a response");
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.expect("the error envelope");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        assert_eq!(body["error"]["retryable"], false, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("tenant default") && message.contains("spent 0.00 of its hard budget of 0.00"),
            "{message}"
        );
    }
    let listed: Value = http.get(server.url("/api/v1/tasks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"], json!([]), "nothing was queued");
    server.stop().await;
}
