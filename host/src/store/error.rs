//! What a caller of the store learns when it fails: whether to try again.

/// A store call that failed, and of which kind: callers answer `Full` and `Busy` with 503
/// (try again later) and `Broken` with 500.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

/// The kinds of failure a caller answers differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The disk, or the database's size limit, is full: writes fail until space returns,
    /// reads still work.
    Full,
    /// The database was busy, or the disk failed an I/O call: worth trying again shortly.
    Busy,
    /// Anything else: a corrupt file, a bug, the writer gone. Trying again will not help.
    Broken,
}

impl StoreError {
    /// The kind of `error`, told by the SQLite error somewhere in its chain; the message
    /// keeps the whole chain.
    pub(crate) fn classify(error: &anyhow::Error) -> StoreError {
        let code = error
            .chain()
            .find_map(|cause| cause.downcast_ref::<rusqlite::Error>())
            .and_then(rusqlite::Error::sqlite_error_code);
        let kind = match code {
            Some(rusqlite::ErrorCode::DiskFull) => StoreErrorKind::Full,
            Some(
                rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
                | rusqlite::ErrorCode::SystemIoFailure,
            ) => StoreErrorKind::Busy,
            _ => StoreErrorKind::Broken,
        };
        StoreError {
            kind,
            message: format!("{error:#}"),
        }
    }

    /// A store that cannot be reached now (cluster mode: NATS or JetStream unavailable):
    /// worth trying again shortly.
    pub(crate) fn unavailable(message: impl Into<String>) -> StoreError {
        StoreError {
            kind: StoreErrorKind::Busy,
            message: message.into(),
        }
    }

    pub(crate) fn broken(message: impl Into<String>) -> StoreError {
        StoreError {
            kind: StoreErrorKind::Broken,
            message: message.into(),
        }
    }

    /// The same failure, its message led by what was being done.
    pub(crate) fn context(mut self, doing: &str) -> StoreError {
        self.message = format!("{doing}: {}", self.message);
        self
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether the failure may pass by itself (`Full` or `Busy`).
    pub fn is_transient(&self) -> bool {
        self.kind != StoreErrorKind::Broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn sqlite(code: i32) -> anyhow::Error {
        let error = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        Err::<(), _>(error).context("failed to append").unwrap_err()
    }

    #[test]
    fn failures_are_told_apart_through_their_context() {
        assert_eq!(
            StoreError::classify(&sqlite(rusqlite::ffi::SQLITE_FULL)).kind(),
            StoreErrorKind::Full
        );
        assert_eq!(
            StoreError::classify(&sqlite(rusqlite::ffi::SQLITE_BUSY)).kind(),
            StoreErrorKind::Busy
        );
        let corrupt = StoreError::classify(&sqlite(rusqlite::ffi::SQLITE_CORRUPT));
        assert_eq!(corrupt.kind(), StoreErrorKind::Broken);
        assert!(
            corrupt.to_string().starts_with("failed to append: "),
            "{corrupt}"
        );
        assert!(!corrupt.is_transient());
        let other = StoreError::classify(&anyhow::anyhow!("no sqlite here"));
        assert_eq!(other.kind(), StoreErrorKind::Broken);
    }
}
