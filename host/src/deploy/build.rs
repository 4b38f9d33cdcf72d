//! Building what a change needs to run: each distinct module compiled once (by digest), then
//! linked once per handler with its settings. Compiling takes milliseconds to seconds of CPU,
//! so it runs on the blocking pool, never on the async threads. Every problem is collected,
//! so that a plan fails with all of them at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::HandlerSettings;
use crate::live::LiveSet;
use crate::name::HandlerName;
use crate::runtime::{Artifact, Linked, Runtime};
use crate::store::Backend;

/// A handler to build.
pub(super) struct Item {
    pub name: HandlerName,
    pub sha256: String,
    pub settings: HandlerSettings,
    /// The module's bytes when the caller has them; else the store's are read.
    pub bytes: Option<Arc<[u8]>>,
    /// Where the module came from, for messages: its path, `the uploaded module`, a version.
    pub from: String,
}

/// Build `items`: linked handlers by name, or every problem, each naming its handler.
pub(super) async fn build(
    runtime: &Arc<Runtime>,
    store: &dyn Backend,
    live: &LiveSet,
    items: Vec<Item>,
) -> Result<BTreeMap<HandlerName, Linked>, Vec<String>> {
    // What runs already is compiled already.
    let mut artifacts: HashMap<String, Result<Artifact, String>> = live
        .handlers()
        .values()
        .map(|h| {
            (
                h.deployed.artifact().sha256().to_owned(),
                Ok(h.deployed.artifact().clone()),
            )
        })
        .collect();
    let mut to_compile: Vec<(String, Option<Arc<[u8]>>)> = Vec::new();
    for item in &items {
        if artifacts.contains_key(&item.sha256) {
            continue;
        }
        match to_compile.iter_mut().find(|(sha, _)| *sha == item.sha256) {
            Some((_, bytes)) => {
                if bytes.is_none() {
                    bytes.clone_from(&item.bytes);
                }
            }
            None => to_compile.push((item.sha256.clone(), item.bytes.clone())),
        }
    }
    // A few at a time: each compile uses every core already, and holds its module's bytes.
    let at_once = std::thread::available_parallelism().map_or(2, |n| n.get());
    for batch in to_compile.chunks(at_once) {
        let mut compiles = Vec::new();
        for (sha, bytes) in batch {
            let bytes = match bytes {
                Some(bytes) => Ok(bytes.clone()),
                None => match store.module(sha).await {
                    Ok(Some(bytes)) => Ok(Arc::from(bytes)),
                    Ok(None) => Err(format!("its module {sha} is missing from the store")),
                    Err(err) => Err(format!("failed to read its module from the store: {err}")),
                },
            };
            let runtime = runtime.clone();
            let compile = tokio::task::spawn_blocking(move || {
                bytes.and_then(|bytes| runtime.compile(&bytes).map_err(|err| format!("{err:#}")))
            });
            compiles.push((sha.clone(), compile));
        }
        for (sha, compile) in compiles {
            let compiled = compile
                .await
                .unwrap_or_else(|_| Err("the compile panicked".to_owned()));
            artifacts.insert(sha, compiled);
        }
    }

    // Linking is cheap (type-checking imports and exports), but not free for a thousand
    // handlers: one trip to the blocking pool for all of them.
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || {
        let mut linked = BTreeMap::new();
        let mut problems = Vec::new();
        for item in items {
            let result = match &artifacts[&item.sha256] {
                Ok(artifact) => runtime
                    .link(artifact, &item.settings)
                    .map_err(|err| format!("{err:#}")),
                Err(why) => Err(why.clone()),
            };
            match result {
                Ok(handler) => {
                    linked.insert(item.name, handler);
                }
                Err(why) => problems.push(format!(
                    "handler `{}`: module {}: {why}",
                    item.name, item.from
                )),
            }
        }
        match problems.is_empty() {
            true => Ok(linked),
            false => Err(problems),
        }
    })
    .await
    .unwrap_or_else(|_| Err(vec!["linking the handlers panicked".to_owned()]))
}
