//! The data directory on disk: who may read it, and that one host at a time uses it.
//!
//! The store holds every event's `data` and every handler's state, and the compiled cache
//! holds native code the host will run: both are private to the user the host runs as
//! (directories 0700, the database 0600; SQLite gives its `-wal` and `-shm` files the
//! database's mode). Two hosts on one data directory would both run every pending delivery
//! and both claim the same work, so the first one takes an exclusive lock on a file in it
//! and a second one refuses to start, naming the directory. The lock is the kernel's (`flock`
//! through `File::try_lock`): it goes with the process, however it dies, so a `kill -9` never
//! leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The file in the data directory whose lock says a host is using it.
const LOCK_FILE: &str = "evhost.lock";

/// Create `dir` (and its parents) readable by the owner only; an existing directory keeps
/// its mode (it may be shared on purpose: the host warns when it locks it).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create the directory {}", dir.display()))
}

/// Make sure `path` exists and only its owner can read or write it.
pub(super) fn make_private_file(path: &Path) -> Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    // An existing file keeps the mode it was created with: set it, it is ours.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("failed to make {} private", path.display()))?;
    Ok(())
}

/// The exclusive use of a data directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Lock `data_dir` (created if missing), or fail naming it if another host holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
        create_private_dir(data_dir)?;
        let mode = std::fs::metadata(data_dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %data_dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "others may read the data directory; `chmod 700` it to keep events and state \
                 private"
            );
        }
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => bail!(
                "the data directory {} is in use by another evhost (it holds the lock on {}): \
                 stop that host, or give this one its own --data",
                data_dir.display(),
                path.display()
            ),
            Err(TryLockError::Error(err)) => {
                Err(err).with_context(|| format!("failed to lock {}", path.display()))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap();
        let second = DataDirLock::acquire(&data).unwrap_err();
        assert!(
            format!("{second:#}").contains("in use by another evhost"),
            "{second:#}"
        );
        drop(first);
        DataDirLock::acquire(&data).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
