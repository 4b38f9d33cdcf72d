//! Who may call the admin API (and `/metrics`): the admin token, and the `Host` and `Origin`
//! checks that keep a web page from reaching it through the operator's browser.
//!
//! - [`AdminToken`]: a token is at least [`AdminToken::MIN_BYTES`] long, or the host refuses
//!   to start (an empty `EVHOST_ADMIN_TOKEN=` from a unit file must not mean "no auth"). The
//!   presented token is compared as a SHA-256 digest in constant time, so neither its bytes
//!   nor its length leak through timing. `Bearer` is matched case-insensitively (RFC 6750
//!   section 2.1 names the scheme, and RFC 9110 section 11.1 makes schemes case-insensitive).
//! - [`Guard`]: a browser sends requests to `127.0.0.1` on behalf of any page it shows. Two
//!   attacks follow, and each has its check:
//!   - DNS rebinding: a page on `evil.example` re-points its name at 127.0.0.1 and reads the
//!     answers as same-origin. Its requests carry `Host: evil.example`, so a host without a
//!     token answers only requests whose `Host` is an IP address, `localhost`, or a name the
//!     operator allowed (`--allow-host`). With a token the page cannot authenticate, so the
//!     names are checked only when the operator gave a list.
//!   - Cross-site requests (CSRF): `POST .../rollback` needs no preflight, so a page can send
//!     it blind. Browsers put `Origin` on every such request; one whose origin is not this
//!     host's own (`Origin` naming the same `Host`) is refused. Tools like curl send no
//!     `Origin` and pass.

use std::net::{IpAddr, SocketAddr};

use axum::http::header::{self, HeaderMap};
use axum::http::{HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ingress::problem::Problem;

/// The admin API's shared secret, kept as its digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Why a configured token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the admin token is empty (an unset variable expanded into EVHOST_ADMIN_TOKEN or \
         --admin-token?): set a random token of at least {min} bytes, e.g. `openssl rand -hex \
         32`, or leave it out to serve on loopback only",
        min = AdminToken::MIN_BYTES
    )]
    Empty,
    #[error(
        "the admin token is {len} bytes, under the minimum of {min}: use a random token, e.g. \
         `openssl rand -hex 32`",
        min = AdminToken::MIN_BYTES
    )]
    TooShort { len: usize },
    #[error("the admin token has spaces or control characters; it must fit in one header")]
    NotPrintable,
}

impl AdminToken {
    /// The shortest token accepted: 16 bytes of a random hex or base64 string is beyond
    /// guessing over HTTP.
    pub const MIN_BYTES: usize = 16;

    pub fn new(token: &str) -> Result<AdminToken, TokenError> {
        if token.trim().is_empty() {
            return Err(TokenError::Empty);
        }
        // Visible ASCII only (RFC 6750's b64token is narrower still): a space or a control
        // character could never arrive intact in an `Authorization` header.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable);
        }
        if token.len() < Self::MIN_BYTES {
            return Err(TokenError::TooShort { len: token.len() });
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `authorization` (the header's value) is `Bearer <this token>`.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(presented) = authorization.and_then(bearer_credentials) else {
            return false;
        };
        // Digests have one length whatever was presented: comparing them in constant time
        // leaks neither the token's bytes nor its length.
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// The credentials of a `Bearer` authorization, the scheme matched case-insensitively.
fn bearer_credentials(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let scheme = b"bearer ";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    Some(value[scheme.len()..].trim_ascii())
}

/// The `Host` and `Origin` checks for one listening host.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Host names (no port) the operator allowed, lowercase.
    allowed_names: Vec<String>,
    /// Whether a name must be allowed: without a token (rebinding could reach an open API),
    /// or when the operator gave names.
    check_names: bool,
}

impl Guard {
    pub fn new(allowed_hosts: &[String], has_token: bool) -> Guard {
        let allowed_names: Vec<String> = allowed_hosts
            .iter()
            .map(|name| name.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        Guard {
            check_names: !has_token || !allowed_names.is_empty(),
            allowed_names,
        }
    }

    /// Refuses a request whose `Host` may come from DNS rebinding, or whose `Origin` is not
    /// this host's own.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Box<Problem>> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        if self.check_names && !self.host_allowed(host) {
            return Err(Box::new(
                Problem::new(StatusCode::FORBIDDEN)
                    .with_detail(format!(
                        "`Host: {host}` is not an address of this host: the admin API answers \
                         requests for an IP address, `localhost`, or a name allowed with \
                         --allow-host (EVHOST_ALLOW_HOSTS)"
                    ))
                    .with_member("header", "host"),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !same_origin(origin, host) {
                return Err(Box::new(
                    Problem::new(StatusCode::FORBIDDEN)
                        .with_detail(format!(
                            "cross-origin request from `{origin}` refused: the admin API \
                             answers only its own pages and clients that send no `Origin`"
                        ))
                        .with_member("header", "origin"),
                ));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        if name.parse::<IpAddr>().is_ok() {
            // An address literal names no domain a page could re-point.
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || self.allowed_names.contains(&name)
    }
}

/// The name or address of a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`), without
/// the port and brackets; `None` when it is not one.
fn host_name(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        return match after {
            "" => Some(address),
            port if port.strip_prefix(':')?.parse::<u16>().is_ok() => Some(address),
            _ => None,
        };
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        Some(_) => return None,
        None => host,
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(name)
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a page served by this host as
/// `host`.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // `null` and the like: an opaque origin is never ours
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |authority: &str| -> String {
        let authority = authority.to_ascii_lowercase();
        let has_port = match authority.rfind(']') {
            Some(end) => authority[end..].contains(':'),
            None => authority.contains(':'),
        };
        match has_port {
            true => authority,
            false => format!("{authority}:{default_port}"),
        }
    };
    !host.is_empty() && with_port(authority) == with_port(host)
}

/// Whether the host may serve the admin API on `addr` with the token it has (none: loopback
/// only, since anyone who reaches the port could deploy code).
pub fn check_listen(addr: SocketAddr, token: Option<&AdminToken>) -> anyhow::Result<()> {
    if token.is_none() && !addr.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve the admin API on {addr} without a token: set --admin-token \
             (or EVHOST_ADMIN_TOKEN), or listen on a loopback address"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn tokens_must_be_long_and_printable() {
        assert_eq!(AdminToken::new("").unwrap_err(), TokenError::Empty);
        assert_eq!(AdminToken::new("   ").unwrap_err(), TokenError::Empty);
        assert_eq!(
            AdminToken::new("short").unwrap_err(),
            TokenError::TooShort { len: 5 }
        );
        assert_eq!(
            AdminToken::new("0123456789 abcdef").unwrap_err(),
            TokenError::NotPrintable
        );
        assert!(AdminToken::new("0123456789abcdef").is_ok());
    }

    #[test]
    fn bearer_is_case_insensitive_and_the_token_exact() {
        let token = AdminToken::new("0123456789abcdef").unwrap();
        let admits = |v: &str| token.admits(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(admits("Bearer 0123456789abcdef"));
        assert!(admits("bearer 0123456789abcdef"));
        assert!(admits("BEARER  0123456789abcdef "));
        assert!(!admits("Bearer 0123456789abcde"));
        assert!(!admits("Bearer 0123456789abcdefg"));
        assert!(!admits("Basic 0123456789abcdef"));
        assert!(!admits("Bearer"));
        assert!(!admits("Bearer "));
        assert!(!token.admits(None));
    }

    #[test]
    fn without_a_token_only_addresses_localhost_and_allowed_names_pass() {
        let guard = Guard::new(&["Evhost.Internal".to_owned()], false);
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "evhost.internal:9000",
            "10.1.2.3:80",
        ] {
            assert!(guard.check(&headers(&[("host", host)])).is_ok(), "{host}");
        }
        for host in [
            "evil.example:8080",
            "",
            "localhost.evil.example",
            "a b",
            "x:y",
        ] {
            let refused = guard.check(&headers(&[("host", host)])).unwrap_err();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{host}");
        }
        // With a token and no list, names are the token's business.
        let open = Guard::new(&[], true);
        assert!(open.check(&headers(&[("host", "evil.example")])).is_ok());
    }

    #[test]
    fn only_this_hosts_own_origin_passes() {
        let guard = Guard::new(&[], false);
        let check = |origin: &str| {
            guard
                .check(&headers(&[("host", "127.0.0.1:8080"), ("origin", origin)]))
                .is_ok()
        };
        assert!(check("http://127.0.0.1:8080"));
        assert!(!check("https://evil.example"));
        assert!(!check("http://127.0.0.1:9090"));
        assert!(!check("null"));
        let default_port = |origin: &str, host: &str| {
            guard
                .check(&headers(&[("host", host), ("origin", origin)]))
                .is_ok()
        };
        assert!(default_port("http://localhost", "localhost:80"));
        assert!(default_port("https://localhost:443", "localhost"));
        assert!(!default_port("https://localhost", "localhost:80"));
    }
}
