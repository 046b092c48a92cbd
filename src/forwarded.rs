//! The real client address behind reverse proxies (`server.trusted_proxies`).
//!
//! A proxy appends the address it received a connection from to
//! `Forwarded: for=...` (RFC 7239) or `X-Forwarded-For`. Anyone can send
//! those headers, so they are believed only from a trusted peer, and then
//! only as far back as the chain stays trusted: walking from the right
//! (the hop nearest to us), each address given by a trusted proxy replaces
//! the current one, and the first address that is not itself a trusted
//! proxy is the client. `Forwarded` wins when both are present.
//!
//! A leaf: nothing else in the crate.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, header};
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: &[IpNet]) -> Self {
        Self(networks.to_vec())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: `peer` itself unless `peer` is a trusted proxy
    /// that says otherwise.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let forwarded = header_values(headers, header::FORWARDED);
        let chain: Vec<&str> = if forwarded.is_empty() {
            header_values(headers, "x-forwarded-for")
                .into_iter()
                .flat_map(|v| v.split(','))
                .collect()
        } else {
            forwarded
                .into_iter()
                .flat_map(|v| v.split(','))
                .filter_map(forwarded_for)
                .collect()
        };
        let mut client = peer;
        for hop in chain.iter().rev() {
            if !self.trusts(client) {
                break;
            }
            // An unparsable hop ("unknown", an obfuscated name) ends the
            // chain at the proxy that reported it.
            match parse_node(hop) {
                Some(ip) => client = ip,
                None => break,
            }
        }
        client
    }
}

fn header_values(headers: &HeaderMap, name: impl header::AsHeaderName) -> Vec<&str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then_some(value)
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]:4711`, optionally in double quotes.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok().map(canonical);
    }
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack
/// listener reports) compare as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(&nets.iter().map(|n| n.parse().unwrap()).collect::<Vec<_>>())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(p.client_ip(ip("192.0.2.9"), &h), ip("192.0.2.9"));
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies(&["10.0.0.0/8", "192.168.1.1/32"]);
        // The client forged the first entry; our proxies added the rest.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 192.168.1.1")]);
        assert_eq!(p.client_ip(ip("10.1.2.3"), &h), ip("203.0.113.7"));
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        assert_eq!(p.client_ip(ip("10.1.2.3"), &h), ip("203.0.113.7"));
        // Every hop trusted: the leftmost is as far as we can see.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(p.client_ip(ip("10.1.2.3"), &h), ip("10.9.9.9"));
        // A garbage hop stops the walk at the proxy that reported it.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, unknown")]);
        assert_eq!(p.client_ip(ip("10.1.2.3"), &h), ip("10.1.2.3"));
    }

    #[test]
    fn forwarded_wins_and_its_forms_parse() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[
            (
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https",
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "by=10.0.0.2;For=192.0.2.60:1234")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("192.0.2.60"));
    }

    #[test]
    fn mapped_addresses_match_ipv4_networks() {
        let p = proxies(&["127.0.0.1/32"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(p.client_ip(ip("::ffff:127.0.0.1"), &h), ip("203.0.113.7"));
    }
}
