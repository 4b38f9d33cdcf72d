//! Names the host gives out and looks up: handlers and the application.
//!
//! A name ends up in URLs (`/admin/handlers/{name}`), metric labels, store keys and the
//! `source` of emitted events (`/{app}/{handler}`), so it is a newtype that can only hold a
//! valid one: lowercase letters, digits, `-` and `_`, at most [`MAX_NAME_LEN`] characters.
//! Whoever holds a [`HandlerName`] never checks it again.

use std::borrow::Borrow;
use std::fmt;

/// Longest app or handler name.
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError(
            "expected a non-empty string, got \"\"".to_owned(),
        ));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_LEN {
        return Err(NameError(format!(
            "expected at most {MAX_NAME_LEN} characters, got {chars} ({name:?})"
        )));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if !name.chars().all(allowed) {
        return Err(NameError(format!(
            "expected a name of lowercase letters a-z, digits 0-9, `-` and `_`, got {name:?}"
        )));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn new(name: impl Into<String>) -> Result<$name, NameError> {
                let name = name.into();
                check(&name)?;
                Ok($name(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;

            fn from_str(name: &str) -> Result<$name, NameError> {
                $name::new(name)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let name = String::deserialize(deserializer)?;
                $name::new(name).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A deployed handler's name.
    HandlerName
);

name_type!(
    /// The application's name (`[app] name`), part of every emitted event's `source`.
    AppName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hold_only_what_urls_labels_and_sources_can_carry() {
        for good in ["inventory", "erp-sync", "a_1", &"x".repeat(MAX_NAME_LEN)] {
            assert!(HandlerName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Inventory",
            "with space",
            "a/b",
            "é",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(HandlerName::new(bad).is_err(), "{bad}");
        }
        let name: HandlerName = serde_json::from_str("\"payment\"").expect("a valid name");
        assert_eq!(name, "payment");
        assert!(serde_json::from_str::<AppName>("\"Shop\"").is_err());
    }
}
