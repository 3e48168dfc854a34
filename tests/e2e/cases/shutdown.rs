//! Graceful shutdown: in-flight requests finish and every answered request has its usage row.

use std::time::{Duration, Instant};

use mock_upstream::MockConfig;

use crate::common::{Gateway, chat_body, http, mock, read_usage, standard_policy};

#[tokio::test]
async fn sigterm_with_requests_in_flight_loses_no_usage_row() {
    let mock = mock(MockConfig {
        latency: Duration::from_millis(600),
        ..MockConfig::default()
    })
    .await;
    let mut gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let client = http();
    let send = |i: u64| {
        let client = client.clone();
        let url = gw.url("/v1/chat/completions");
        let secret = secret.clone();
        tokio::spawn(async move {
            let mut body = chat_body("chat");
            body["stream"] = i.is_multiple_of(3).into();
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
        })
    };
    let in_flight: Vec<_> = (0..40).map(send).collect();
    // Wait until every one of them is at the provider, i.e. in flight inside the gateway.
    let deadline = Instant::now() + Duration::from_secs(20);
    while mock.count() < 40 {
        assert!(
            Instant::now() < deadline,
            "requests never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.sigterm();
    // Requests sent after the signal are refused or answered, never half-recorded.
    let late: Vec<_> = (40..60).map(send).collect();
    let mut answered = 0;
    for task in in_flight {
        assert_eq!(
            task.await.unwrap(),
            Some(200),
            "in-flight requests finish normally"
        );
        answered += 1;
    }
    for task in late {
        if let Some(status) = task.await.unwrap() {
            assert_eq!(status, 200);
            answered += 1;
        }
    }
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "graceful exit: {status:?}");
    let rows = read_usage(&gw.db_url).await;
    assert_eq!(rows.len(), answered, "one usage row per answered request");
    assert!(rows.iter().all(|r| r["status"] == 200));
}
