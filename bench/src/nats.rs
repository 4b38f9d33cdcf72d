//! What the cluster scenarios need of NATS: a nats-server of the bench's own (a child process
//! on a free port, with a fresh store, never a server already running on the machine), and a
//! read-only view of an app's stream that says when each delivery was committed.
//!
//! A done record (`evh.{app}.done.{handler}.{event key}`) carries `at_ms`, the unix-ms time
//! of its commit: the cluster's counterpart of a delivery's `updated_at` in the single-node
//! store, and read in the same way, once after a run, so that measuring does not add load to
//! the servers under test. While a run drains, the bench only asks for the handler's consumer
//! info (one request every 25 ms).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer};
use evhost::cluster::records::DoneRecord;
use futures::StreamExt;

use crate::process::{self, Usage};

/// How long a fresh nats-server may take to take JetStream requests.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Done records one fetch asks for.
const FETCH_BATCH: usize = 4096;

/// The nats-server the tests use (`tools/nats-server/install.py`, which pins its version and
/// is a no-op once installed), or `EVHOST_NATS_SERVER` when set. The error says why the
/// cluster rows are skipped.
pub async fn server_binary(workspace: &Path) -> std::result::Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("EVHOST_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let script = workspace.join("tools/nats-server/install.py");
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|err| format!("failed to run python3 {script:?}: {err}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        return Err(format!(
            "tools/nats-server/install.py failed ({}): {last}",
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "tools/nats-server/install.py printed {path:?}, which is no file"
        ))
    }
}

/// A running nats-server of the bench's own, killed when dropped.
pub struct NatsServer {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    child: tokio::process::Child,
    pid: u32,
    /// Its config file and JetStream store; removed with it.
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Start `binary` on a free loopback port with JetStream on in a fresh directory under
    /// `work_dir`, its output in `log`, and wait until it answers JetStream requests.
    pub async fn spawn(binary: &Path, work_dir: &Path, log: PathBuf) -> Result<NatsServer> {
        let dir = tempfile::Builder::new()
            .prefix("nats-")
            .tempdir_in(work_dir)?;
        let port = process::free_port()?.port();
        let config = dir.path().join("nats.conf");
        // 8 MB: what the host's largest record (a module's chunk, a big event) needs.
        std::fs::write(
            &config,
            format!(
                "host: 127.0.0.1\nport: {port}\nmax_payload: 8MB\njetstream {{\n  store_dir: {:?}\n}}\n",
                dir.path().join("jetstream")
            ),
        )?;
        let out =
            std::fs::File::create(&log).with_context(|| format!("failed to create {log:?}"))?;
        let err = out.try_clone()?;
        let mut child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {binary:?}"))?;
        let pid = child.id().context("nats-server has no pid")?;
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(client) = async_nats::connect(&url).await
                && jetstream::new(client).query_account().await.is_ok()
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nats-server exited while starting ({status}); its log:\n{}",
                    process::tail(&log)
                );
            }
            if Instant::now() > deadline {
                bail!("nats-server was not ready after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(NatsServer {
            url,
            child,
            pid,
            _dir: dir,
        })
    }

    pub fn usage(&self) -> Usage {
        process::usage_of(&self.pid.to_string())
    }

    /// Stop the server (SIGKILL: its store is thrown away).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// An app's stream, read from outside.
pub struct StreamView {
    js: jetstream::Context,
    stream: String,
    /// `evh.{app}`.
    prefix: String,
}

impl StreamView {
    /// The stream of `app` (`EVHOST_{app}`) on the server at `url`.
    pub async fn connect(url: &str, app: &str) -> Result<StreamView> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("failed to connect to {url}"))?;
        Ok(StreamView {
            js: jetstream::new(client),
            stream: format!("EVHOST_{app}"),
            prefix: format!("evh.{app}"),
        })
    }

    /// Deliveries of `handler` (an unordered one: one consumer, named after it) not yet
    /// acknowledged, handed out or not. A host acknowledges after the commit, so 0 means
    /// every accepted event's delivery is committed.
    pub async fn backlog(&self, handler: &str) -> Result<u64> {
        let stream = self.js.get_stream(&self.stream).await?;
        let info = stream.consumer_info(handler).await?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// Wait until `handler`'s backlog is empty (polling every 25 ms) or `timeout` passes;
    /// returns whether it emptied.
    pub async fn wait_drained(&self, handler: &str, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.backlog(handler).await? == 0 {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every done record of `handler`: its event key (the subject's last token) and when it
    /// was committed, unix ms.
    pub async fn done_records(&self, handler: &str) -> Result<HashMap<String, i64>> {
        let filter = format!("{}.done.{handler}.*", self.prefix);
        let mut done = HashMap::new();
        self.read_all(&filter, |subject, payload| {
            let record: DoneRecord = serde_json::from_slice(payload)
                .with_context(|| format!("unreadable done record on {subject}"))?;
            if let Some(key) = subject.rsplit('.').next() {
                done.insert(key.to_owned(), record.at_ms);
            }
            Ok(())
        })
        .await?;
        Ok(done)
    }

    /// Dead letters of every handler.
    pub async fn dead(&self) -> Result<u64> {
        let filter = format!("{}.dead.*.*", self.prefix);
        let mut count = 0;
        self.read_all(&filter, |_, _| {
            count += 1;
            Ok(())
        })
        .await?;
        Ok(count)
    }

    /// Every message on `filter` now, through an ephemeral consumer that needs no acks.
    async fn read_all(
        &self,
        filter: &str,
        mut each: impl FnMut(&str, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let stream = self.js.get_stream(&self.stream).await?;
        let mut consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: filter.to_owned(),
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .with_context(|| format!("failed to read {filter}"))?;
        let total = consumer.info().await?.num_pending;
        let mut read = 0u64;
        while read < total {
            let mut batch = consumer
                .fetch()
                .max_messages(FETCH_BATCH)
                .expires(Duration::from_secs(2))
                .messages()
                .await?;
            let before = read;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|err| anyhow::anyhow!("reading {filter}: {err}"))?;
                each(message.subject.as_str(), &message.payload)?;
                read += 1;
            }
            if read == before {
                bail!("{filter}: read {read} of {total} messages, then nothing more came");
            }
        }
        let name = consumer.cached_info().name.clone();
        let _ = stream.delete_consumer(&name).await;
        Ok(())
    }
}
