//! What keeps web pages out: the `Host` and `Origin` checks.
//!
//! A page on another site can make the operator's browser send requests to
//! the server (a "simple" cross-site request), and a hostile DNS name can be
//! pointed at 127.0.0.1 (rebinding) so that the browser thinks the server is
//! that page's own origin. The first carries the page's `Origin`; the second
//! carries the hostile name in `Host`. So `Host` must be a loopback name, the
//! address the server is bound to, or a configured name, and `Origin`, when
//! present, a loopback origin on the server's port, the request's own
//! (already checked) host, or a configured origin. Both hold on loopback too.

use std::net::{IpAddr, SocketAddr};

use crate::config::AuthConfig;

/// Why a request's `Host` or `Origin` is refused; the message names the header.
pub(crate) fn check(
    config: &AuthConfig,
    local: SocketAddr,
    host: Option<&str>,
    origin: Option<&str>,
) -> Result<(), String> {
    if let Some(host) = host
        && !host_allowed(config, local, host)
    {
        return Err(format!(
            "the Host header {host:?} is not allowed (loopback names, the bind address and auth.allowed_hosts are)"
        ));
    }
    if let Some(origin) = origin
        && !origin_allowed(config, local.port(), host, origin)
    {
        return Err(format!(
            "the Origin header {origin:?} is not allowed (loopback origins on port {} and auth.allowed_origins are)",
            local.port()
        ));
    }
    Ok(())
}

fn host_allowed(config: &AuthConfig, local: SocketAddr, authority: &str) -> bool {
    let Some((name, _)) = split_authority(authority) else { return false };
    if is_loopback_name(&name) || config.allowed_hosts.contains(&name) {
        return true;
    }
    // An address cannot be rebound: a hostile page can only reach it under a
    // name. The bind address is allowed; on an unspecified bind (0.0.0.0),
    // any of the machine's addresses may be in use, so any address is.
    match name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => local.ip().is_unspecified() || ip == local.ip(),
        Err(_) => false,
    }
}

fn origin_allowed(config: &AuthConfig, port: u16, host: Option<&str>, origin: &str) -> bool {
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if config.allowed_origins.contains(&origin) {
        return true;
    }
    let (scheme, authority) = match origin.split_once("://") {
        Some((scheme @ ("http" | "https"), authority)) if !authority.is_empty() && !authority.contains('/') => {
            (scheme, authority)
        }
        _ => return false,
    };
    // Same origin: the page was served by this server under its checked Host.
    if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return true;
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    match split_authority(authority) {
        Some((name, origin_port)) => is_loopback_name(&name) && origin_port.unwrap_or(default_port) == port,
        None => false,
    }
}

/// `(lowercase host, port)` of `host[:port]` or `[v6]:port`.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.to_ascii_lowercase();
    let (name, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        (authority[..=end].to_owned(), rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) => (name.to_owned(), Some(port)),
            None => (authority.clone(), None),
        }
    };
    let port = port.map(str::parse::<u16>).transpose().ok()?;
    if name.is_empty() { None } else { Some((name, port)) }
}

fn is_loopback_name(name: &str) -> bool {
    name == "localhost"
        || name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_configured_names_pass_others_do_not() {
        let config = AuthConfig {
            allowed_hosts: vec!["godel.internal".into()],
            allowed_origins: vec!["https://ops.example.com".into()],
            ..AuthConfig::default()
        };
        let local: SocketAddr = "127.0.0.1:7373".parse().unwrap();
        let ok = |host: Option<&str>, origin: Option<&str>| check(&config, local, host, origin).is_ok();
        assert!(ok(Some("127.0.0.1:7373"), None));
        assert!(ok(Some("localhost:7373"), Some("http://localhost:7373")));
        assert!(ok(Some("[::1]:7373"), Some("http://[::1]:7373")));
        assert!(ok(Some("godel.internal"), Some("https://ops.example.com")));
        assert!(ok(Some("godel.internal:7373"), Some("http://godel.internal:7373")));
        assert!(!ok(Some("evil.example"), None));
        assert!(!ok(Some("evil.example:7373"), None));
        assert!(!ok(Some("10.0.0.1:7373"), None));
        assert!(!ok(Some("127.0.0.1:7373"), Some("http://evil.example")));
        assert!(!ok(Some("127.0.0.1:7373"), Some("null")));
        assert!(!ok(Some("127.0.0.1:7373"), Some("http://localhost:8080")));
        assert!(!ok(Some("127.0.0.1:7373"), Some("http://localhost")));
        let any: SocketAddr = "0.0.0.0:7373".parse().unwrap();
        assert!(check(&config, any, Some("10.0.0.1:7373"), None).is_ok());
        assert!(check(&config, any, Some("evil.example"), None).is_err());
    }
}
