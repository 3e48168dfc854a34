//! The client's address: the socket peer, or, when the peer is a trusted proxy (a load
//! balancer), the first untrusted address of `X-Forwarded-For` read from the right.
//!
//! Reading from the right matters: a client can put anything on the left of the header, and
//! only the hops appended by trusted proxies are believed. Without trusted proxies the header is
//! ignored. An entry that is not an address stops the walk at the last trusted hop.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Networks whose `X-Forwarded-For` is believed (`--trusted-proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDR networks or single addresses.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match item.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "trusted proxy '{item}' is not an address or a CIDR network"
                        ));
                    }
                },
            };
            nets.push(net.trunc());
        }
        Ok(Self(nets))
    }

    /// Whether no proxy is trusted (the header is then ignored).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request that arrived from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Several headers are one list, in order.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest
            .split(']')
            .next()?
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical());
    }
    let (host, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", v.parse().expect("header value"));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("192.0.2.1"), &headers(&["10.0.0.1"])),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").expect("parse");
        let peer = ip("10.0.0.2");
        assert_eq!(
            trusted.client_ip(peer, &headers(&["198.51.100.7, 203.0.113.5, 192.168.1.1"])),
            ip("203.0.113.5"),
            "the spoofable left part is not believed"
        );
        assert_eq!(
            trusted.client_ip(peer, &headers(&["198.51.100.7", "203.0.113.5:4711"])),
            ip("203.0.113.5"),
            "several headers are one list; ports are dropped"
        );
        assert_eq!(trusted.client_ip(peer, &HeaderMap::new()), peer);
        assert_eq!(
            trusted.client_ip(peer, &headers(&["garbage, 10.1.1.1"])),
            ip("10.1.1.1"),
            "an entry that is not an address stops at the last trusted hop"
        );
        assert_eq!(
            trusted.client_ip(peer, &headers(&["[2001:db8::7]:443"])),
            ip("2001:db8::7")
        );
        assert_eq!(
            trusted.client_ip(ip("::ffff:10.0.0.2"), &headers(&["203.0.113.5"])),
            ip("203.0.113.5"),
            "an IPv4-mapped peer is its IPv4 address"
        );
    }

    #[test]
    fn a_bad_entry_in_the_list_is_an_error() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("lb.internal").is_err());
        assert!(TrustedProxies::parse("").expect("empty").is_empty());
    }
}
