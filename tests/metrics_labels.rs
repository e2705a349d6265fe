//! Metric labels cannot be blown up from outside: requests with made-up
//! HTTP methods and paths, and SIP requests with made-up methods, all land
//! in one `other` label value instead of a new series each.

mod common;

use common::Gateway;

#[tokio::test]
async fn made_up_methods_and_paths_are_counted_as_other() {
    let gw = Gateway::start("", "");
    let client = reqwest::Client::new();
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("FOO{i}").as_bytes()).unwrap();
        let _ = client
            .request(method, format!("{}/v1/sessions", gw.api()))
            .send()
            .await
            .unwrap();
        let _ = client
            .get(format!("{}/random-{i}/x", gw.api()))
            .send()
            .await
            .unwrap();
    }
    // SIP requests with made-up methods, from a socket of our own.
    let sip = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sip.local_addr().unwrap();
    for i in 0..5 {
        let request = format!(
            "BAR{i} sip:1001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:x@{me}>;tag=t{i}\r\nTo: <sip:1001@127.0.0.1>\r\n\
             Call-ID: labels-{i}\r\nCSeq: 1 BAR{i}\r\nContent-Length: 0\r\n\r\n"
        );
        sip.send_to(request.as_bytes(), gw.sip).unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let text = reqwest::get(format!("http://{}/metrics", gw.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("gateway_http_requests_total{")
                || l.starts_with("gateway_sip_messages_total{")
        })
        .collect();
    for bad in ["FOO", "random-", "BAR"] {
        assert!(
            !series.iter().any(|l| l.contains(bad)),
            "{bad} made a series of its own:\n{}",
            series.join("\n")
        );
    }
    let others: f64 = series
        .iter()
        .filter(|l| l.contains("method=\"other\"") || l.contains("route=\"other\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        others >= 20.0,
        "the requests were counted as other:\n{}",
        series.join("\n")
    );
}
