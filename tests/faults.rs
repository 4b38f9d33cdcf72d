//! The disk and the data directory: a full disk mid-load, and a second host on one data
//! directory. Against the real binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use evhost_tests::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// A tmpfs of `size` mounted on a temporary directory, unmounted when dropped. A real file
/// system that really fills up: SQLite meets ENOSPC as it would on a full disk.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a {size} tmpfs failed: this test fills a real file system and needs root \
             (CI runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write a file until the file system has no space left; its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("the filler");
        let block = vec![0xA5u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(28) => break, // ENOSPC
                Err(err) => panic!("filling the disk: {err}"),
            }
        }
        // Smaller writes take the last partial block.
        loop {
            match file.write(&block[..512]) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        drop(
            std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status(),
        );
    }
}

fn recorder_app() -> tempfile::TempDir {
    recorder_app_dir("disk", "test.disk.v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_507_goes_not_ready_and_recovers_losing_nothing() {
    guests_dir();
    let app = recorder_app();
    let disk = SmallDisk::mount("24m");
    let data = disk.path().join("data");
    let cache = tempfile::tempdir().expect("a temporary directory");
    let app_dir = app.path().display().to_string();
    let cache_dir = cache.path().display().to_string();
    let mut host =
        HostProcess::new(app.path(), &[&app_dir, "--cache-dir", &cache_dir]).with_data_dir(data);
    let client = host.start().await.clone();

    // Every request's id, with the status it got.
    let mut statuses: BTreeMap<String, u16> = BTreeMap::new();
    let post = |id: String| {
        let client = client.clone();
        async move {
            let event = event(&id, "test.disk.v1", json!({"pad": "x".repeat(2000)}));
            let status = client.post_structured(&event).await.status().as_u16();
            (id, status)
        }
    };
    for i in 0..50 {
        let (id, status) = post(format!("before-{i}")).await;
        assert_eq!(status, 202);
        statuses.insert(id, status);
    }

    let filler = disk.fill();
    // Keep posting, 8 at a time, until the store has refused a good number of them.
    let mut refused = 0;
    let mut batch = 0;
    while refused < 40 {
        assert!(batch < 2000, "the full disk never refused a write");
        let answers = (0..8)
            .map(|j| post(format!("full-{batch}-{j}")))
            .collect::<tokio::task::JoinSet<_>>()
            .join_all()
            .await;
        for (id, status) in answers {
            assert!(
                matches!(status, 202 | 503 | 507),
                "{id} got {status}: a full disk answers 202, 503 or 507"
            );
            if status != 202 {
                refused += 1;
            }
            statuses.insert(id, status);
        }
        batch += 1;
    }
    assert!(
        statuses.values().any(|s| *s == 507),
        "no 507 among {statuses:?}"
    );
    // A refusal says when to come back.
    let refusal = client
        .post_structured(&event(
            "probe-1",
            "test.disk.v1",
            json!({"pad": "x".repeat(4000)}),
        ))
        .await;
    if refusal.status() != 202 {
        assert!(refusal.headers().contains_key("retry-after"));
        let problem: serde_json::Value = refusal.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("nothing was stored"),
            "{problem}"
        );
        statuses.insert("probe-1".into(), problem["status"].as_u64().unwrap() as u16);
    } else {
        statuses.insert("probe-1".into(), 202);
    }
    // Not ready while it cannot write; reads still work.
    let readyz = client.get("/readyz").await;
    assert_eq!(readyz.status(), 503);
    let why: serde_json::Value = readyz.json().await.unwrap();
    assert!(
        why["detail"]
            .as_str()
            .unwrap()
            .contains("the store cannot write"),
        "{why}"
    );
    assert_eq!(client.get("/healthz").await.status(), 200);
    assert!(!client.events(&[("type", "test.disk.v1")]).await.is_empty());

    // Space comes back: the host is ready again by itself, and takes events.
    std::fs::remove_file(filler).expect("free the space");
    client
        .eventually("ready again", WAIT, || async {
            client.get("/readyz").await.status() == 200
        })
        .await;
    for i in 0..20 {
        let (id, status) = post(format!("after-{i}")).await;
        assert_eq!(status, 202, "{id} after the space came back");
        statuses.insert(id, status);
    }

    // Every 202 is in the log once, and nothing refused is.
    let logged: BTreeMap<String, usize> =
        client
            .event_log()
            .await
            .into_iter()
            .fold(BTreeMap::new(), |mut ids, event| {
                *ids.entry(event.event["id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
                ids
            });
    for (id, status) in &statuses {
        let count = logged.get(id).copied().unwrap_or(0);
        match status {
            202 => assert_eq!(count, 1, "{id} was accepted"),
            _ => assert_eq!(count, 0, "{id} was refused with {status} but is in the log"),
        }
    }
    // The deliveries of what was accepted all ran.
    client.wait_idle(WAIT).await;
    let accepted = statuses.values().filter(|s| **s == 202).count();
    let refused = statuses.len() - accepted;
    eprintln!("disk full: {accepted} accepted, {refused} refused, none lost");
    host.terminate(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_on_one_data_directory_refuses_to_start() {
    guests_dir();
    let app = recorder_app();
    let app_dir = app.path().display().to_string();
    let parent = tempfile::tempdir().expect("a temporary directory");
    let data = parent.path().join("data");
    let mut first = HostProcess::new(app.path(), &[&app_dir]).with_data_dir(data.clone());
    first.start().await;

    let out = evhost_command()
        .current_dir(app.path())
        .args(["up", &app_dir, "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second host started: {stderr}");
    assert!(stderr.contains("is in use by another evhost"), "{stderr}");
    // The first host is unharmed.
    assert_eq!(first.get("/readyz").await.status(), 200);

    // The store and the directory are the user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("evhost.db")), 0o600);
    assert_eq!(mode(&data.join("compiled")), 0o700);

    // A kill -9 leaves no stale lock: the next host starts.
    first.kill().await;
    first.start().await;
    assert_eq!(first.get("/readyz").await.status(), 200);
}
