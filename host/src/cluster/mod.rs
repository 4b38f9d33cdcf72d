//! Cluster mode (placeholder, filled below).

pub mod batch;
pub mod subjects;
