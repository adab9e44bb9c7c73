//! Who the client is: the socket peer, or the first `X-Forwarded-For` hop
//! when (and only when) the peer is a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted_proxies.iter().any(|net| net.contains(&peer)) {
        return peer;
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|hop| parse_hop(hop.trim()))
        .map(|ip| ip.to_canonical())
        .unwrap_or(peer)
}

/// A hop is an IP, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let peer: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(peer, &headers("203.0.113.5"), &[]), peer);
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(peer, &headers("203.0.113.5"), &trusted), peer);
    }

    #[test]
    fn first_hop_is_used_from_trusted_peers() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let got = client_ip(proxy, &headers("203.0.113.5, 10.9.9.9"), &trusted);
        assert_eq!(got, "203.0.113.5".parse::<IpAddr>().unwrap());
        let got = client_ip(proxy, &headers("[2001:db8::1]:443"), &trusted);
        assert_eq!(got, "2001:db8::1".parse::<IpAddr>().unwrap());
        // Garbage falls back to the peer.
        assert_eq!(client_ip(proxy, &headers("unknown"), &trusted), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_proxies() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let got = client_ip(peer, &headers("203.0.113.5"), &trusted);
        assert_eq!(got, "203.0.113.5".parse::<IpAddr>().unwrap());
    }
}
