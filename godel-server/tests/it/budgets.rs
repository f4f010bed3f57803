//! A tenant past its hard budget: the server refuses new tasks with 403
//! `forbidden`, a message naming the tenant, the spend and the limit, and
//! `retryable: false`. A hard budget of zero refuses from the first task,
//! which provokes the refusal without spending anything.

use serde_json::{Value, json};

use crate::support::TestServer;

#[tokio::test]
async fn past_the_hard_budget_submits_are_forbidden() {
    let server = TestServer::start("[budgets]\ndefault = { hard = 0 }\n").await;
    let http = server.http();
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

/// An http agent from godel.toml answering through the fake endpoint, its
/// cost counted against the tenant's budget until submits are refused.
#[tokio::test]
async fn http_agents_spend_until_the_hard_budget_refuses() {
    let fake = godel_fakes::openai::FakeOpenAi::start_keyless().await;
    fake.script("gpt-a", [godel_fakes::openai::Reply::answer("hello from the fake", 12, 5)]);
    // 12 × 2.00 + 5 × 8.00 per million tokens: 64 micros a task; the hard budget is 100.
    let toml = format!(
        "[engine]\npoll_interval = \"20ms\"\n\
         [[agents]]\nid = \"llm\"\nkind = \"http\"\nurl = \"{}\"\nmodels = [\"gpt-a\"]\ncapacity = 2\n\
         [prices.\"gpt-a\"]\ninput_per_million = 2.0\noutput_per_million = 8.0\n\
         [budgets]\ndefault = {{ soft = 0.00005, hard = 0.0001 }}\n",
        fake.base_url()
    );
    let server = TestServer::start(&toml).await;
    let http = server.http();
    for n in 0..2 {
        let created: Value = http
            .post(server.url("/api/v1/tasks"))
            .json(&json!({"prompt": format!("task {n}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = server.url(&format!("/api/v1/tasks/{}", created["id"].as_str().unwrap()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let task = loop {
            let task: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
            if task["status"] == "completed" {
                break task;
            }
            assert!(std::time::Instant::now() < deadline, "not completed: {task}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(task["result"]["text"], "hello from the fake");
        assert_eq!(task["result"]["cost_micros"], 64);
        assert_eq!(task["result"]["usage"]["total_tokens"], 17);
    }
    let refused = http.post(server.url("/api/v1/tasks")).json(&json!({"prompt": "one more"})).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("spent 0.000128 of its hard budget of 0.0001"), "{message}");
    assert_eq!(fake.requests("gpt-a"), 2);
    server.stop().await;
}
