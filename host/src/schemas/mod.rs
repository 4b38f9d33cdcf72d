//! Event versions: a schema registry, compatibility rules, upcasters and the deploy gate.
//!
//! # How the parts fit
//!
//! - **Versions.** A type is `NAME.vN` ([`version`]): the family `NAME` at version `N`. The
//!   router still matches types exactly; a handler that reads older versions says so
//!   (`accept_older`), and is routed those too.
//! - **Schemas.** Each version may have a JSON Schema (draft 2020-12, [`validate`]),
//!   registered through the manifest (`[[schema]]`), the admin API or the CLI, and never
//!   changed after: a change is the next version. The registry's records ([`book`]) are
//!   kept in the store, and survive restarts.
//! - **Validation.** Ingress refuses an event whose `data` does not match its type's schema
//!   (400, naming the pointer and the rule) and stores none of its request; events a handler
//!   emits are checked the same way before they are committed (the invocation fails). An
//!   accepted event's `dataschema` is the schema's URL on the host. With `[schemas] require =
//!   true`, a type without a schema is refused.
//! - **Compatibility.** A new version is checked against the earlier ones by its family's
//!   mode ([`compat`]); one that breaks readers is refused (409, each change named), unless it
//!   comes with an upcaster from the previous version, or the mode is `none`.
//! - **Upcasters.** A pure Wasm component (`wit/upcaster-0.1.0`) that turns `NAME.vN` into
//!   `NAME.vN+1`. When a handler that reads `vM` gets an older event, the host upcasts it one
//!   step at a time (an upcaster, or for a version that reads the previous one as it is, the
//!   new version's defaults filled in), checks each step's output against that version's
//!   schema, and delivers the result; the stored event never changes. A step that fails
//!   dead-letters the delivery, naming the step.
//! - **The gate.** A deploy (and a removal of a schema or an upcaster) is refused when an
//!   event could reach a handler in a version it cannot read: a registered older version
//!   with no upcast path to the version it reads, a pending delivery of a version it does not
//!   take in, or the schema of the version it reads missing ([`Registry::gate`]).

pub mod book;
pub mod compat;
pub mod policy;
pub mod registry;
pub mod validate;
pub mod version;

pub use book::{Book, BookError, Outcome, Registration};
pub use compat::Compatibility;
pub use policy::SchemaPolicy;
pub use registry::Registry;
pub use version::{AcceptOlder, VersionedType};
