//! Where outbound webhooks may connect (issue 21): a job's webhook URL is chosen by whoever
//! holds a `jobs:write` token, so without a check it is a server-side request forgery vector
//! toward services bound to loopback, the private network or the cloud metadata address.
//!
//! By default ([`TargetPolicy::PublicOnly`]) a delivery connects only to public unicast
//! addresses. Refused, for IPv4: `0.0.0.0/8`, `10/8`, `100.64/10` (shared), `127/8`,
//! `169.254/16` (link-local, with the metadata address `169.254.169.254`), `172.16/12`,
//! `192.0.0/24`, `192.168/16`, `198.18/15`, documentation ranges, multicast, `240/4` and
//! broadcast; for IPv6: `::`, `::1`, `fc00::/7` (unique local, with AWS's `fd00:ec2::254`),
//! `fe80::/10`, `fec0::/10`, multicast, documentation, and any IPv4 address embedded as
//! `::ffff:a.b.c.d`, `::a.b.c.d` or `64:ff9b::a.b.c.d`, judged as that IPv4 address.
//!
//! The check runs on the **resolved** addresses at connect time: [`FilteringResolver`] is the
//! HTTP client's DNS resolver and drops every refused address, so a name that resolves to a
//! public address when the job is submitted and to `127.0.0.1` when the webhook is sent (DNS
//! rebinding) is still refused. IP-literal hosts, which the client never resolves, are checked
//! by [`check_url`] before the request. Redirects are never followed and no proxy is used, so
//! nothing else chooses the address. `api.allow_private_webhook_targets = true`
//! ([`TargetPolicy::AnyAddress`]) lifts the check for deployments whose receivers are on the
//! private network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which addresses a webhook may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetPolicy {
    /// Public unicast addresses only (the default).
    #[default]
    PublicOnly,
    /// Any address, private and loopback included (`api.allow_private_webhook_targets`).
    AnyAddress,
}

/// A webhook target refused by the policy. Found by walking an HTTP error's sources.
#[derive(Debug, thiserror::Error)]
#[error("the webhook target resolves only to addresses that are not public")]
pub struct ForbiddenTarget;

/// Whether `ip` is a public unicast address a webhook may reach.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240;
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::/96)
    // addresses reach the IPv4 address they carry.
    let embedded = ip.to_ipv4_mapped().or_else(|| {
        let compatible = segments[..6].iter().all(|s| *s == 0);
        let nat64 = segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0; 4];
        (compatible || nat64).then(|| {
            let [_, _, _, _, _, _, high, low] = segments;
            Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
        })
    });
    if let Some(v4) = embedded
        && !ip.is_loopback()
        && !ip.is_unspecified()
    {
        return is_public_v4(v4);
    }
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (segments[0] & 0xffc0) == 0xfec0
        || (segments[0] == 0x2001 && segments[1] == 0x0db8);
    !refused
}

/// Checks a URL whose host is an IP literal (the client connects to those without resolving
/// them); host names are left to [`FilteringResolver`].
pub fn check_url(url: &reqwest::Url, policy: TargetPolicy) -> Result<(), ForbiddenTarget> {
    if policy == TargetPolicy::AnyAddress {
        return Ok(());
    }
    let literal = url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']'));
    match literal.and_then(|h| h.parse::<IpAddr>().ok()) {
        Some(ip) if !is_public(ip) => Err(ForbiddenTarget),
        _ => Ok(()),
    }
}

/// The webhook client's DNS resolver: the system's answer, less every address the policy
/// refuses; no address left is a [`ForbiddenTarget`] error.
#[derive(Clone, Copy, Debug)]
pub struct FilteringResolver {
    policy: TargetPolicy,
}

impl FilteringResolver {
    /// A resolver applying `policy`.
    pub fn new(policy: TargetPolicy) -> Self {
        Self { policy }
    }
}

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| policy == TargetPolicy::AnyAddress || is_public(addr.ip()))
                .collect();
            if resolved.is_empty() {
                return Err(Box::new(ForbiddenTarget) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(resolved.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether `error` (or any of its sources) is a [`ForbiddenTarget`].
pub fn is_forbidden(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<ForbiddenTarget>() {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_metadata_ranges_are_refused() {
        for refused in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused} must be refused");
        }
        for allowed in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(allowed.parse().unwrap()), "{allowed} must be allowed");
        }
    }

    #[test]
    fn ip_literal_urls_are_checked_and_names_left_to_the_resolver() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let public = TargetPolicy::PublicOnly;
        assert!(check_url(&url("http://127.0.0.1:9/x"), public).is_err());
        assert!(check_url(&url("https://[::1]/x"), public).is_err());
        assert!(check_url(&url("https://169.254.169.254/latest"), public).is_err());
        assert!(check_url(&url("https://example.com/x"), public).is_ok());
        assert!(check_url(&url("http://127.0.0.1:9/x"), TargetPolicy::AnyAddress).is_ok());
    }
}
