//! Servers under test run as child processes, so that their memory (peak RSS from
//! `/proc/<pid>/status`) and CPU time are theirs alone, not mixed with the load generator's.
//!
//! A child is killed when its [`Server`] is dropped; the harness only ever ends processes it
//! started, by their pid.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a server may take to answer `/readyz` (1000 handlers load in well under this).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A running child server.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    /// From spawn to the first good `/readyz`.
    pub startup: Duration,
    pub log: PathBuf,
    child: tokio::process::Child,
    pid: u32,
}

/// What `/proc` says about a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Resident set size now (VmRSS), KiB.
    pub rss_kib: u64,
    /// User + system CPU time, all threads.
    pub cpu: Duration,
}

impl Server {
    /// Start `program args...` with its stdout and stderr in `log`, after reserving a free
    /// loopback port for it; `args` may use `{addr}`, which is replaced by that address.
    pub async fn spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<Server> {
        let addr = free_port()?;
        let args: Vec<OsString> = args
            .iter()
            .map(|arg| match arg.to_str() {
                Some(text) if text.contains("{addr}") => {
                    text.replace("{addr}", &addr.to_string()).into()
                }
                _ => arg.clone(),
            })
            .collect();
        let out =
            std::fs::File::create(&log).with_context(|| format!("failed to create {log:?}"))?;
        let err = out.try_clone()?;
        let started = Instant::now();
        let mut command = tokio::process::Command::new(program);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {program:?}"))?;
        let pid = child.id().context("the child has no pid")?;
        let mut server = Server {
            name: name.to_owned(),
            addr,
            startup: Duration::ZERO,
            log,
            child,
            pid,
        };
        server.wait_ready().await?;
        server.startup = started.elapsed();
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited while starting ({status}); its log:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                bail!("{} was not ready after {READY_TIMEOUT:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn usage(&self) -> Usage {
        usage_of(&self.pid.to_string())
    }

    /// Stop the server (SIGKILL: nothing it does after the measurement matters).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Peak and current RSS and CPU time of a process (`self` for this one).
pub fn usage_of(pid: &str) -> Usage {
    let mut usage = Usage::default();
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kib = |rest: &str| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
            };
            if let Some(rest) = line.strip_prefix("VmHWM:") {
                usage.peak_rss_kib = kib(rest);
            } else if let Some(rest) = line.strip_prefix("VmRSS:") {
                usage.rss_kib = kib(rest);
            }
        }
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The command name (field 2) may hold spaces; fields after its ')' are plain.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
                usage.cpu = Duration::from_secs_f64((user + system) as f64 / clock_ticks());
            }
        }
    }
    usage
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
fn clock_ticks() -> f64 {
    100.0
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
