//! The app's `[schemas]` table: what the registry asks of every event.

use super::compat::Compatibility;

/// The app's `[schemas]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchemaPolicy {
    /// Refuse events (from producers and handlers) whose type has no schema, and handlers
    /// subscribing to one.
    pub require: bool,
    /// The mode of a family that has none set.
    pub compatibility: Compatibility,
}
