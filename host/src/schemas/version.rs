//! The version syntax of event types.
//!
//! A versioned type is `NAME.vN`: a family name, a dot, a `v` and a version number, e.g.
//! `com.example.shop.order.placed.v2` is version 2 of the family
//! `com.example.shop.order.placed`. `N` is a whole number from 1 to [`MAX_VERSION`], written
//! without leading zeros (`v01` is not a version: two spellings of one version would be two
//! types to the router). The name is what comes before the last `.v`; it must not be empty.
//!
//! A type without that suffix (`com.example.ping`) is still a valid type: it is routed and
//! may have a schema, but it has no family, so nothing is upcast to or from it.

use std::fmt;

/// The highest version number a type may carry.
pub const MAX_VERSION: u32 = 1_000_000;

/// A type split into its family and version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionedType {
    family: String,
    version: u32,
}

impl VersionedType {
    /// `ty` as `NAME.vN`, or `None` when it does not end in a version.
    pub fn parse(ty: &str) -> Option<VersionedType> {
        let (family, version) = ty.rsplit_once(".v")?;
        let well_formed = !family.is_empty()
            && !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_digit())
            && !version.starts_with('0');
        if !well_formed {
            return None;
        }
        let version: u32 = version.parse().ok().filter(|v| *v <= MAX_VERSION)?;
        Some(VersionedType {
            family: family.to_owned(),
            version,
        })
    }

    /// Version `version` of `family`.
    pub fn new(family: impl Into<String>, version: u32) -> VersionedType {
        VersionedType {
            family: family.into(),
            version,
        }
    }

    pub fn family(&self) -> &str {
        &self.family
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The same family at another version.
    pub fn at(&self, version: u32) -> VersionedType {
        VersionedType::new(self.family.clone(), version)
    }
}

/// `NAME.vN`.
impl fmt::Display for VersionedType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.v{}", self.family, self.version)
    }
}

/// Why a type cannot have the role asked of it, for messages: the rule in words.
pub fn explain(ty: &str) -> String {
    format!(
        "`{ty}` is not a versioned type (`NAME.vN`: a name, `.v`, and a version from 1 to \
         {MAX_VERSION} without leading zeros)"
    )
}

/// Which older versions of its subscribed types a handler reads (its `accept_older`
/// setting); the host upcasts them to the version it subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcceptOlder {
    /// Only the versions it subscribes to (the default).
    #[default]
    No,
    /// Every older version.
    All,
    /// Versions from this one up.
    From(u32),
}

/// Older versions one subscription may take in; past it the route table would grow with
/// versions nobody registers.
pub const MAX_ACCEPTED_VERSIONS: u32 = 1000;

impl AcceptOlder {
    /// The oldest version of a family read by a subscription to `version` of it.
    pub fn oldest(self, version: u32) -> u32 {
        match self {
            AcceptOlder::No => version,
            AcceptOlder::All => version.saturating_sub(MAX_ACCEPTED_VERSIONS).max(1),
            AcceptOlder::From(from) => from.min(version),
        }
    }

    /// How the manifest spells it: `true`, `false`, `"vN"`.
    pub fn as_setting(self) -> String {
        match self {
            AcceptOlder::No => "false".into(),
            AcceptOlder::All => "true".into(),
            AcceptOlder::From(from) => format!("v{from}"),
        }
    }

    /// Reads what [`AcceptOlder::as_setting`] wrote (and what a manifest may say).
    pub fn from_setting(text: &str) -> Result<AcceptOlder, String> {
        match text {
            "false" => Ok(AcceptOlder::No),
            "true" => Ok(AcceptOlder::All),
            _ => text
                .strip_prefix('v')
                .filter(|n| !n.starts_with('0'))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| (1..=MAX_VERSION).contains(n))
                .map(AcceptOlder::From)
                .ok_or_else(|| {
                    format!(
                        "expected true, false or the oldest version to read (\"v1\", \"v2\", ...), \
                         got {text:?}"
                    )
                }),
        }
    }
}

/// Every type a handler with these subscriptions is routed: each subscribed type, and, for
/// each versioned one, the older versions `accept` takes in (types subscribed themselves are
/// not repeated).
pub fn routed_types(subscribe: &[String], accept: AcceptOlder) -> Vec<String> {
    let mut types = subscribe.to_vec();
    if accept == AcceptOlder::No {
        return types;
    }
    for ty in subscribe {
        let Some(parsed) = VersionedType::parse(ty) else {
            continue;
        };
        for version in accept.oldest(parsed.version())..parsed.version() {
            let older = parsed.at(version).to_string();
            if !types.contains(&older) {
                types.push(older);
            }
        }
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_family_and_version() {
        let ty = VersionedType::parse("com.example.shop.order.placed.v12").unwrap();
        assert_eq!(ty.family(), "com.example.shop.order.placed");
        assert_eq!(ty.version(), 12);
        assert_eq!(ty.to_string(), "com.example.shop.order.placed.v12");
        assert_eq!(ty.at(13).to_string(), "com.example.shop.order.placed.v13");
    }

    #[test]
    fn the_last_dot_v_splits() {
        let ty = VersionedType::parse("a.v1.b.v2").unwrap();
        assert_eq!((ty.family(), ty.version()), ("a.v1.b", 2));
    }

    #[test]
    fn refuses_what_is_not_a_version() {
        for ty in [
            "com.example.ping",
            "order.placed.v",
            "order.placed.v0",
            "order.placed.v01",
            "order.placed.vx",
            "order.placed.v1a",
            ".v1",
            "v1",
            "order.placed.V1",
            "order.placed.v-1",
            "order.placed.v+1",
            "order.placed.v1000001",
            "order.placed.v99999999999999999999",
        ] {
            assert_eq!(VersionedType::parse(ty), None, "{ty}");
        }
        assert!(VersionedType::parse("x.v1000000").is_some());
    }

    #[test]
    fn routes_the_older_versions_a_handler_accepts() {
        let subscribe = vec!["a.v3".to_owned(), "ping".to_owned(), "b.v1".to_owned()];
        assert_eq!(routed_types(&subscribe, AcceptOlder::No), subscribe);
        assert_eq!(
            routed_types(&subscribe, AcceptOlder::All),
            ["a.v3", "ping", "b.v1", "a.v1", "a.v2"]
        );
        assert_eq!(
            routed_types(&subscribe, AcceptOlder::From(2)),
            ["a.v3", "ping", "b.v1", "a.v2"]
        );
        let both = vec!["a.v1".to_owned(), "a.v2".to_owned()];
        assert_eq!(routed_types(&both, AcceptOlder::All), ["a.v1", "a.v2"]);
    }

    #[test]
    fn reads_accept_older_settings() {
        for setting in [AcceptOlder::No, AcceptOlder::All, AcceptOlder::From(4)] {
            assert_eq!(
                AcceptOlder::from_setting(&setting.as_setting()),
                Ok(setting)
            );
        }
        for bad in ["v0", "v01", "2", "yes", "v"] {
            let err = AcceptOlder::from_setting(bad).unwrap_err();
            assert!(err.contains("expected true, false"), "{err}");
        }
    }
}
