//! The `Origin` allowlist: browsers send the page's origin with every
//! WebSocket handshake, so a relay can refuse pages it does not serve (403,
//! before the upgrade).
//!
//! Entries are exact origins (`https://app.example.com`, with a port if it
//! is not the scheme's default) or a wildcard for subdomains
//! (`https://*.example.com`, which does not match `https://example.com`
//! itself). An empty list allows any origin. A handshake without an `Origin`
//! header comes from a non-browser client, which could claim any origin
//! anyway, and is allowed.
//!
//! A leaf: nothing else in the crate.

/// Allowed origins, lower-cased and checked at load.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    exact: Vec<String>,
    /// (`scheme://`, `.suffix[:port]`) for `scheme://*.suffix[:port]`.
    wildcard: Vec<(String, String)>,
}

impl OriginPolicy {
    /// Builds the policy, or says which entry is malformed.
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let mut policy = Self::default();
        for entry in entries {
            let e = entry.trim().to_ascii_lowercase();
            let (scheme, host) = e
                .split_once("://")
                .filter(|(s, h)| !s.is_empty() && !h.is_empty() && !h.contains('/'))
                .ok_or_else(|| {
                    format!("origin {entry:?} must look like https://host[:port] or https://*.host")
                })?;
            match host.strip_prefix('*') {
                Some(suffix)
                    if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
                {
                    policy
                        .wildcard
                        .push((format!("{scheme}://"), suffix.to_owned()));
                }
                Some(_) => {
                    return Err(format!(
                        "origin {entry:?}: a wildcard must be a whole leading label, as in https://*.example.com"
                    ));
                }
                None if host.contains('*') => {
                    return Err(format!(
                        "origin {entry:?}: a wildcard must be a whole leading label"
                    ));
                }
                None => policy.exact.push(e),
            }
        }
        Ok(policy)
    }

    /// Whether a handshake with this `Origin` header (if any) may upgrade.
    pub fn allows(&self, origin: Option<&[u8]>) -> bool {
        if self.exact.is_empty() && self.wildcard.is_empty() {
            return true;
        }
        let Some(origin) = origin else { return true };
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = origin.trim().to_ascii_lowercase();
        if self.exact.contains(&origin) {
            return true;
        }
        self.wildcard.iter().any(|(scheme, suffix)| {
            origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|sub| {
                    !sub.is_empty()
                        && sub
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn empty_list_allows_any_origin() {
        assert!(policy(&[]).allows(Some(b"https://anything.test")));
    }

    #[test]
    fn exact_and_wildcard_entries() {
        let p = policy(&[
            "https://app.example.com",
            "https://*.example.org",
            "http://localhost:3000",
        ]);
        assert!(p.allows(Some(b"https://app.example.com")));
        assert!(p.allows(Some(b"HTTPS://APP.EXAMPLE.COM")));
        assert!(p.allows(Some(b"https://a.example.org")));
        assert!(p.allows(Some(b"https://a.b.example.org")));
        assert!(p.allows(Some(b"http://localhost:3000")));
        assert!(p.allows(None), "non-browser clients send no Origin");
        for refused in [
            &b"https://example.org"[..],
            b"http://a.example.org",
            b"https://evil.com",
            b"https://app.example.com.evil.com",
            b"https://evil.com/.example.org",
            b"https://a.example.org:8443",
            b"http://localhost:3001",
            b"null",
            b"\xff",
        ] {
            assert!(
                !p.allows(Some(refused)),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn malformed_entries_are_rejected() {
        for bad in [
            "example.com",
            "https://",
            "https://*example.com",
            "https://a.*.com",
            "https://x.com/path",
            "https://*.",
        ] {
            assert!(OriginPolicy::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
