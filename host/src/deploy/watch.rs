//! `evhost up --watch`: the dev loop. Whenever the manifest file or a module it names changes,
//! the manifest is read again and applied as a plan, exactly as at start: a rebuilt module
//! goes live, a handler added to the manifest is deployed, one dropped from it is removed.
//!
//! It polls modification times and sizes: portable, and cheap for a handful of files. A
//! manifest that no longer reads, or a module that does not build, is logged and changes
//! nothing; the next change is tried again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Deployer, Plan};
use crate::config::Manifest;
use crate::store::Origin;

/// How often `--watch` looks at the files.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Watch `manifest` (as loaded at start) and apply it again on every change.
pub fn watch(deployer: Arc<Deployer>, manifest: Manifest) {
    tokio::spawn(async move {
        let mut manifest = manifest;
        let mut seen = stamps(&manifest);
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        loop {
            ticks.tick().await;
            let now = stamps(&manifest);
            if now == seen {
                continue;
            }
            seen = now;
            // The manifest file may have changed too; one that was never a file (a manifest
            // built in memory) stays as it is.
            if manifest.path.is_file() {
                match Manifest::load(&manifest.path) {
                    Ok(reloaded) => manifest = reloaded,
                    Err(err) => {
                        tracing::warn!(
                            manifest = %manifest.path.display(),
                            problems = %err,
                            "the manifest changed but does not read; nothing changed"
                        );
                        continue;
                    }
                }
                seen = stamps(&manifest);
            }
            let read = manifest.clone();
            let plan = tokio::task::spawn_blocking(move || Plan::from_manifest(&read)).await;
            let Ok(plan) = plan else {
                continue;
            };
            let result = deployer.apply(plan).await;
            match result {
                Ok(changes) => {
                    for change in &changes {
                        super::log_change(change, Origin::Manifest);
                    }
                }
                Err(err) => tracing::warn!(
                    error = %err,
                    "the manifest or a module changed but did not deploy; what was live stays"
                ),
            }
        }
    });
}

/// The modification time and size of the manifest and of each module it names.
fn stamps(manifest: &Manifest) -> BTreeMap<PathBuf, Option<(SystemTime, u64)>> {
    let stamp = |path: &PathBuf| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    std::iter::once(&manifest.path)
        .chain(manifest.handlers.iter().map(|h| &h.module))
        .chain(manifest.schemas.iter().map(|s| &s.file))
        .chain(manifest.schemas.iter().filter_map(|s| s.upcaster.as_ref()))
        .map(|path| (path.clone(), stamp(path)))
        .collect()
}
