//! The NATS servers and clusters the cluster mode's tests start (tests/support/nats.rs): a
//! server comes up with JetStream and the configured limits where its URL says, a cluster
//! elects a meta leader, and both come back healthy after a node is killed and restarted.

use std::time::Duration;

use evhost_tests::nats::{CLUSTER_NAME, NatsCluster, NatsServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

/// The `INFO` a NATS server greets a client with on `url` (`nats://127.0.0.1:PORT`).
async fn info(url: &str) -> Value {
    let address = url.strip_prefix("nats://").expect("a nats:// URL");
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
        .unwrap_or_else(|err| panic!("cannot connect to {url}: {err}"));
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .unwrap_or_else(|_| panic!("{url} sent no INFO within 5 s"))
        .unwrap_or_else(|err| panic!("reading the INFO of {url}: {err}"));
    let json = line
        .strip_prefix("INFO ")
        .unwrap_or_else(|| panic!("{url} sent {line:?}"));
    serde_json::from_str(json).unwrap_or_else(|err| panic!("the INFO of {url}: {err}: {line}"))
}

#[tokio::test]
async fn a_server_runs_jetstream_with_the_test_limits_and_restarts() {
    let server = NatsServer::start().await;

    let greeting = info(&server.url()).await;
    assert_eq!(
        greeting["jetstream"],
        true,
        "{greeting}\n{}",
        server.log_tail(20)
    );
    assert_eq!(greeting["max_payload"], 8 << 20, "{greeting}");
    assert_eq!(greeting["port"], server.port(), "{greeting}");

    let jsz = server.monitor_json("/jsz").await;
    let store = jsz["config"]["store_dir"].as_str().unwrap_or_default();
    assert!(
        store.starts_with(&*server.store_dir().to_string_lossy()),
        "JetStream stores in {store:?}, not in {}: {jsz}",
        server.store_dir().display()
    );

    server.kill();
    assert!(!server.is_running());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
            .await
            .is_err(),
        "{} still accepts connections after the kill",
        server.url()
    );
    server.restart().await;
    assert_eq!(info(&server.url()).await["jetstream"], true);
    let log = server.log_tail(usize::MAX);
    assert_eq!(log.matches("Starting nats-server").count(), 2, "{log}");
}

#[tokio::test]
async fn a_cluster_elects_a_meta_leader_and_heals_after_a_node_restarts() {
    let cluster = NatsCluster::start(3).await;
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    assert_eq!(cluster.url(), urls.join(","));
    for (node, url) in cluster.nodes().iter().zip(&urls) {
        let greeting = info(url).await;
        assert_eq!(greeting["server_name"], node.name(), "{greeting}");
        assert_eq!(greeting["cluster"], CLUSTER_NAME, "{greeting}");
        assert_eq!(greeting["jetstream"], true, "{greeting}");
    }
    let leader = cluster
        .meta_leader()
        .await
        .expect("a meta leader after the start");
    let jsz = cluster.node_named(&leader).monitor_json("/jsz").await;
    assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");

    // The leader is the node whose loss makes the others do something: elect another.
    let killed = cluster.node_named(&leader);
    killed.kill();
    let next = cluster.wait_healthy().await;
    assert_ne!(next, leader, "the killed node is still the meta leader");

    killed.restart().await;
    let after = cluster.wait_healthy().await;
    assert!(cluster.nodes().iter().all(|node| node.is_running()));
    let jsz = cluster.node_named(&after).monitor_json("/jsz").await;
    assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");
}
