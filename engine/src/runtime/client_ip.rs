//! The client's real address behind trusted proxies, and the per-IP connection cap. Plain
//! code (no glommio): the accepting shard calls [`client_addr`] on the request head and
//! [`ConnLimiter::admit`] before the upgrade; the returned [`ConnSlot`] travels with the socket to
//! its owner shard and gives the slot back when the connection ends.
//!
//! # Trust
//! `X-Forwarded-For` is read only when the TCP peer is inside `trusted_proxies`. Each proxy
//! appends the address it received from, so the list is walked right to left and the first
//! address outside the trusted ranges is the client; anything to its left was written by the
//! client itself and is ignored. A malformed entry ends the walk at the last good hop, so a
//! client cannot smuggle an address past a proxy by writing garbage.
//!
//! # Counting across shards
//! A socket is admitted on whichever shard accepted it and lives on the owner of its room, so
//! the count must be shared by every shard without a lock on the upgrade path. [`ConnLimiter`]
//! is a count-min sketch: a fixed table of `AtomicU32` buckets, each address incrementing two
//! buckets chosen by a per-process random hash. Admission increments both, then refuses (and
//! undoes the increments) if the smaller bucket exceeds the cap. The smaller bucket is never
//! below the address's true count, so the cap is never exceeded; a collision can only make a
//! client look busier than it is, that is refuse early, and only when both of its buckets are
//! shared with busy addresses (rare with 2 x 2^16 buckets and a seed an attacker cannot know).
//! Concurrent admissions of one address can both see the other's increment and both refuse:
//! again conservative, and the client retries.
//!
//! IPv6 clients are counted by their /64 prefix: one subscriber usually owns a whole /64, so
//! counting single addresses would let one client open a connection per address.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is a host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client a.b.c.d on a dual-stack socket.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// One `X-Forwarded-For` entry: a bare address, or (as some proxies write) `[v6]:port` or
/// `v4:port`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| canonical(a.ip()))
}

/// The client's address: the TCP peer unless it is a trusted proxy, in which case the
/// right-most untrusted `X-Forwarded-For` hop. `xff` yields the header's values in the order
/// they appeared in the request.
pub fn client_addr<'a>(
    peer: IpAddr,
    xff: impl Iterator<Item = &'a str>,
    proxies: &[Cidr],
) -> IpAddr {
    let peer = canonical(peer);
    if !trusted(peer, proxies) {
        return peer;
    }
    let hops: Vec<&str> = xff.flat_map(|v| v.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !trusted(ip, proxies) {
            break;
        }
    }
    client
}

const BUCKETS: usize = 1 << 16;

/// Open sockets per key (a client address, or a user id), shared by every shard. Crosses shards (Send + Sync):
/// lives in `Shared` behind an `Arc`; written with atomics only.
pub struct ConnLimiter {
    max_per_ip: u32,
    buckets: Box<[AtomicU32]>,
    seed: std::collections::hash_map::RandomState,
}

/// A held place in the per-IP count, released on drop. Crosses shards (Send): it travels with
/// the socket from the accepting shard to the owner and dies with the connection.
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    buckets: [usize; 2],
}

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSlot").finish_non_exhaustive()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        for b in self.buckets {
            self.limiter.buckets[b].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Why [`ConnLimiter::admit`] said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit;

impl ConnLimiter {
    /// `max_per_ip` = 0 disables the cap (and the table is not allocated).
    pub fn new(max_per_ip: usize) -> Self {
        let n = if max_per_ip == 0 { 0 } else { BUCKETS };
        ConnLimiter {
            max_per_ip: max_per_ip.min(u32::MAX as usize) as u32,
            buckets: (0..n).map(|_| AtomicU32::new(0)).collect(),
            seed: Default::default(),
        }
    }

    fn key(ip: IpAddr) -> u128 {
        match canonical(ip) {
            IpAddr::V4(v4) => u32::from(v4) as u128,
            // The /64 prefix, tagged so it cannot equal an IPv4 key.
            IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
        }
    }

    /// Takes a place for `ip`, or refuses if that would exceed the cap. `Ok(None)` when no cap
    /// is configured.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<ConnSlot>, OverLimit> {
        self.admit_key(Self::key(ip))
    }

    /// Takes a place for a user id (`123` and `"123"` are one user: ids arrive canonical).
    pub fn admit_user(self: &Arc<Self>, user_id: &str) -> Result<Option<ConnSlot>, OverLimit> {
        self.admit_key(user_id)
    }

    fn admit_key(
        self: &Arc<Self>,
        key: impl std::hash::Hash,
    ) -> Result<Option<ConnSlot>, OverLimit> {
        if self.max_per_ip == 0 {
            return Ok(None);
        }
        let h = self.seed.hash_one(key);
        let mask = (BUCKETS - 1) as u64;
        let a = (h & mask) as usize;
        let mut b = ((h >> 32) & mask) as usize;
        if b == a {
            b = (a + 1) & (BUCKETS - 1);
        }
        let ca = self.buckets[a].fetch_add(1, Ordering::Relaxed) + 1;
        let cb = self.buckets[b].fetch_add(1, Ordering::Relaxed) + 1;
        // Dropping the slot undoes both increments, refused or not.
        let slot = ConnSlot {
            limiter: self.clone(),
            buckets: [a, b],
        };
        if ca.min(cb) > self.max_per_ip {
            return Err(OverLimit);
        }
        Ok(Some(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| Cidr::parse(s).unwrap()).collect()
    }

    #[test]
    fn cidr_parses_and_matches() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!Cidr::parse("fd00::/8").unwrap().contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0/8", "1.2.3.4/x", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let p = proxies(&["127.0.0.1/32"]);
        let got = client_addr(ip("203.0.113.5"), ["1.2.3.4"].into_iter(), &p);
        assert_eq!(got, ip("203.0.113.5"));
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let p = proxies(&["127.0.0.1/32", "10.0.0.0/8"]);
        // The client forged 6.6.6.6; nginx appended the real address; an inner proxy too.
        let got = client_addr(
            ip("127.0.0.1"),
            ["6.6.6.6, 198.51.100.7", "10.0.0.2"].into_iter(),
            &p,
        );
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn all_hops_trusted_gives_the_leftmost() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let got = client_addr(ip("127.0.0.1"), ["10.0.0.9, 10.0.0.2"].into_iter(), &p);
        assert_eq!(got, ip("10.0.0.9"));
        assert_eq!(
            client_addr(ip("127.0.0.1"), std::iter::empty(), &p),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_hop() {
        let p = proxies(&["127.0.0.1/32", "10.0.0.0/8"]);
        let got = client_addr(
            ip("127.0.0.1"),
            ["1.1.1.1, not-an-ip, 10.0.0.3"].into_iter(),
            &p,
        );
        assert_eq!(got, ip("10.0.0.3"));
        let got = client_addr(ip("127.0.0.1"), ["[2001:db8::1]:443"].into_iter(), &p);
        assert_eq!(got, ip("2001:db8::1"));
    }

    #[test]
    fn limiter_caps_each_address_and_releases_on_drop() {
        let l = Arc::new(ConnLimiter::new(2));
        let a = ip("192.0.2.1");
        let s1 = l.admit(a).unwrap().unwrap();
        let s2 = l.admit(a).unwrap().unwrap();
        assert_eq!(l.admit(a).unwrap_err(), OverLimit);
        // A refusal leaves no trace.
        assert_eq!(l.admit(a).unwrap_err(), OverLimit);
        assert!(l.admit(ip("192.0.2.2")).is_ok());
        drop(s1);
        let s3 = l.admit(a).unwrap().unwrap();
        drop((s2, s3));
        assert!(l.buckets.iter().all(|b| b.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let l = Arc::new(ConnLimiter::new(1));
        let _s = l.admit(ip("2001:db8:1:2::1")).unwrap().unwrap();
        assert!(l.admit(ip("2001:db8:1:2::ffff")).is_err());
        assert!(l.admit(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let l = Arc::new(ConnLimiter::new(0));
        for _ in 0..10 {
            assert!(l.admit(ip("192.0.2.1")).unwrap().is_none());
        }
    }

    #[test]
    fn many_distinct_clients_are_not_refused_by_collisions() {
        // 20k addresses fill each bucket with 0.6 others on average; a false refusal needs
        // both of an address's buckets to hold 8 others (odds about 1e-13 per address).
        let l = Arc::new(ConnLimiter::new(8));
        let slots: Vec<_> = (0..20_000u32)
            .map(|i| l.admit(IpAddr::V4(i.into())).expect("no false refusal"))
            .collect();
        assert_eq!(slots.len(), 20_000);
    }
}
