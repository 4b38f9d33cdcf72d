//! The HTTP server's own limits, against the real binary: clients that trickle their headers
//! or their body, more connections than the cap, and a stop with connections still open.

use std::time::{Duration, Instant};

use evhost_tests::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

fn recorder_app() -> tempfile::TempDir {
    recorder_app_dir("limits", "test.work.v1")
}

/// A client that opened a connection and sends a request's first bytes, then one byte at a
/// time, never finishing its headers.
async fn trickler(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream
        .write_all(b"POST /events HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("writes");
    stream
}

/// Whether the server closed `stream` (a read sees the end) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // Keep trickling: a byte at a time must not keep the connection alive.
        if stream.write_all(b"X").await.is_err() {
            return true;
        }
        match tokio::time::timeout(left.min(Duration::from_millis(200)), stream.read(&mut buf))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // an answer (408/400): the close follows
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricklers_are_cut_off_and_cannot_crowd_out_producers() {
    guests_dir();
    let app = recorder_app();
    let dir = app.path().display().to_string();
    let mut host = HostProcess::new(
        app.path(),
        &[
            &dir,
            "--max-connections",
            "20",
            "--header-timeout-ms",
            "1000",
            "--body-timeout-ms",
            "1000",
        ],
    );
    let client = host.start().await.clone();
    let addr = client.base.trim_start_matches("http://").to_owned();

    // More tricklers than the cap: every slot taken, and some waiting.
    let mut tricklers = Vec::new();
    for _ in 0..30 {
        tricklers.push(trickler(&addr).await);
    }
    // A producer still gets in once the tricklers' headers time out.
    let posted = tokio::time::timeout(
        WAIT,
        client.post_structured(&event("after-tricklers", "test.work.v1", json!({}))),
    )
    .await
    .expect("a producer gets a slot once tricklers time out");
    assert_eq!(posted.status(), 202);
    // Each trickler was closed by the host, not left open.
    for stream in &mut tricklers {
        assert!(closed_within(stream, Duration::from_secs(10)).await);
    }

    // A body trickled past the deadline is refused; one sent in time is not. (The header
    // timeout does not apply once headers are in.)
    let mut slow_body = TcpStream::connect(&addr).await.unwrap();
    slow_body
        .write_all(
            b"POST /events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              ce-specversion: 1.0\r\nce-id: slow-1\r\nce-source: /p\r\nce-type: test.work.v1\r\n\
              content-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(WAIT, slow_body.read_to_string(&mut answer)).await;
    assert!(read.is_ok(), "the host answered a body that never came");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    assert!(client.events(&[("source", "/p")]).await.is_empty());
    host.terminate(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_open_connections_after_the_grace_period() {
    guests_dir();
    let app = recorder_app();
    let dir = app.path().display().to_string();
    // A long header timeout: only the stop can close these.
    let mut host = HostProcess::new(
        app.path(),
        &[&dir, "--grace-secs", "2", "--header-timeout-ms", "600000"],
    );
    let client = host.start().await.clone();
    let addr = client.base.trim_start_matches("http://").to_owned();
    let mut open = Vec::new();
    for _ in 0..50 {
        open.push(trickler(&addr).await);
    }
    // And one request in flight, its body never finished.
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(
        b"POST /events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
          ce-specversion: 1.0\r\nce-id: h-1\r\nce-source: /p\r\nce-type: test.work.v1\r\n\
          content-length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = Instant::now();
    let status = host.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let took = stopped.elapsed();
    eprintln!("stopped in {took:?} with 51 connections open");
    for stream in &mut open {
        assert!(closed_within(stream, Duration::from_secs(2)).await);
    }
}
