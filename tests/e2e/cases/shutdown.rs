//! Graceful shutdown: in-flight requests finish and every answered request has its usage row.

use std::time::Duration;

use mock_upstream::MockConfig;

use crate::common::{Gateway, chat_body, http, mock, read_usage, standard_policy};

#[tokio::test]
async fn sigterm_with_requests_in_flight_loses_no_usage_row() {
    let mock = mock(MockConfig {
        latency: Duration::from_millis(400),
        ..MockConfig::default()
    })
    .await;
    let mut gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let client = http();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let client = client.clone();
        let url = gw.url("/v1/chat/completions");
        let secret = secret.clone();
        tasks.push(tokio::spawn(async move {
            // Spread the requests so some start after the signal.
            tokio::time::sleep(Duration::from_millis(i * 5)).await;
            let mut body = chat_body("chat");
            body["stream"] = (i % 3 == 0).into();
            match client
                .post(url)
                .bearer_auth(secret)
                .json(&body)
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.bytes().await.ok().map(|_| status)
                }
                Err(_) => None,
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.sigterm();
    let mut answered = 0;
    for task in tasks {
        if let Some(status) = task.await.unwrap() {
            assert_eq!(status, 200, "in-flight requests finish normally");
            answered += 1;
        }
    }
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "graceful exit: {status:?}");
    assert!(
        answered >= 25,
        "at least the requests in flight at the signal were answered ({answered})"
    );
    let rows = read_usage(&gw.db_url).await;
    assert_eq!(rows.len(), answered, "one usage row per answered request");
    assert!(rows.iter().all(|r| r["status"] == 200));
}
