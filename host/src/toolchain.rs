//! Building handlers: the manifest's `build` commands (`evhost up --build`), and the Rust
//! targets those commands compile for.
//!
//! A `rust-toolchain.toml` that lists `targets = ["wasm32-wasip2"]` only adds the target when
//! rustup installs the toolchain itself; with `RUSTUP_AUTO_INSTALL=0` (common in CI images),
//! or a toolchain installed earlier without it, a build for that target dies with "can't find
//! crate for `core`". So before running the commands, every target they name with
//! `--target T` is checked, and added with `rustup target add T` when rustup is there.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::config::Manifest;

/// Run each handler's `build` command, and each `[[schema]]`'s (its upcaster), in the
/// manifest's folder, one after the other (they usually share a cargo target directory,
/// which serialises them anyway), after making sure the Rust targets they name are
/// installed.
pub async fn build_handlers(manifest: &Manifest) -> Result<()> {
    let builds: Vec<(String, &str)> = manifest
        .handlers
        .iter()
        .filter_map(|h| Some((format!("handler `{}`", h.name), h.build.as_deref()?)))
        .chain(
            manifest
                .schemas
                .iter()
                .filter_map(|s| Some((format!("the upcaster of `{}`", s.ty), s.build.as_deref()?))),
        )
        .collect();
    let mut targets: Vec<&str> = builds
        .iter()
        .flat_map(|(_, command)| rust_targets(command))
        .collect();
    targets.sort_unstable();
    targets.dedup();
    for target in targets {
        let (target, dir) = (target.to_owned(), manifest.dir.clone());
        tokio::task::spawn_blocking(move || ensure_rust_target(&target, &dir))
            .await
            .context("checking the Rust targets panicked")??;
    }
    for (what, command) in &builds {
        tracing::info!(what, command, "building");
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&manifest.dir)
            .status()
            .await
            .with_context(|| format!("{what}: failed to run `{command}`"))?;
        if !status.success() {
            bail!("{what}: build command `{command}` failed ({status})");
        }
    }
    Ok(())
}

/// The targets a shell command names with `--target T` or `--target=T`.
fn rust_targets(command: &str) -> Vec<&str> {
    let mut words = command.split_whitespace();
    let mut targets = Vec::new();
    while let Some(word) = words.next() {
        if word == "--target" {
            targets.extend(words.next());
        } else if let Some(target) = word.strip_prefix("--target=") {
            targets.push(target);
        }
    }
    targets
}

/// Make sure the Rust toolchain that builds in `dir` (the one its `rust-toolchain.toml`
/// pins, if any) has `target`; add it with rustup when it is missing. Blocking.
pub fn ensure_rust_target(target: &str, dir: &Path) -> Result<()> {
    let rustup = which("rustup");
    let sysroot = match sysroot(dir) {
        Ok(sysroot) => sysroot,
        // The pinned toolchain itself is missing (no auto-install): rustup installs the one
        // the toolchain file names, then the target.
        Err(_) if rustup => {
            run(Command::new("rustup")
                .args(["toolchain", "install"])
                .current_dir(dir))
            .context("failed to install the toolchain `rust-toolchain.toml` names")?;
            sysroot(dir)?
        }
        Err(err) => return Err(err),
    };
    if sysroot
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
    {
        return Ok(());
    }
    if !rustup {
        bail!(
            "the Rust target `{target}` is not installed in {} and `rustup` is not on the PATH: \
             install the target with your toolchain's installer (with rustup: `rustup target \
             add {target}`)",
            sysroot.display()
        );
    }
    tracing::info!(target, "adding the Rust target");
    run(Command::new("rustup")
        .args(["target", "add", target])
        .current_dir(dir))
    .with_context(|| {
        format!("failed to add the Rust target `{target}` (`rustup target add {target}`)")
    })
}

fn sysroot(dir: &Path) -> Result<std::path::PathBuf> {
    let output = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(dir)
        .output()
        .context("failed to run `rustc` (is a Rust toolchain installed and on the PATH?)")?;
    if !output.status.success() {
        bail!(
            "`rustc --print sysroot` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().into())
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.output().context("failed to start it")?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Whether `program` is on the PATH.
fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_from_build_commands() {
        assert_eq!(
            rust_targets("cargo build --release --target wasm32-wasip2 -p inventory"),
            ["wasm32-wasip2"]
        );
        assert_eq!(
            rust_targets("cargo build --target=wasm32-wasip1"),
            ["wasm32-wasip1"]
        );
        assert!(rust_targets("python3 build.py notification").is_empty());
        assert!(rust_targets("cargo build --target").is_empty());
    }
}
