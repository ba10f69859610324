//! Webhooks as Standard Webhooks 1.0 defines them: the signature of a message, the owner's
//! secret, and which addresses a webhook may be sent to (public ones only, so a callback URL
//! cannot make exportd reach into its own network: loopback, private, link-local and metadata
//! addresses are refused unless `EXPORTD_WEBHOOK_ALLOW` lists them).

use std::net::IpAddr;

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};

/// Prefix of a signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("the operating system's random number generator");
    format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(random))
}

/// The `webhook-signature` of a message: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
/// keyed with the secret's decoded bytes.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD.decode(encoded).expect("secrets are made by new_secret");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Networks a webhook may reach although they are not public (`EXPORTD_WEBHOOK_ALLOW`).
#[derive(Debug, Clone, Default)]
pub struct Allow(Vec<(IpAddr, u8)>);

impl Allow {
    /// From addresses and CIDR networks (`127.0.0.1`, `10.1.0.0/16`, `::1`).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (addr, bits) = entry.split_once('/').map_or((entry, None), |(a, b)| (a, Some(b)));
            let addr: IpAddr = addr.parse().map_err(|_| format!("{entry:?}: not an IP address or CIDR network"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => {
                    b.parse().ok().filter(|b| *b <= max).ok_or(format!("{entry:?}: prefix length 0 to {max}"))?
                }
            };
            nets.push((addr, bits));
        }
        Ok(Self(nets))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix(u32::from(*n).into(), u32::from(a).into(), *bits, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix(u128::from(*n), u128::from(a), *bits, 128),
            _ => false,
        })
    }

    /// Why `ip` may not be sent to (None: it may): not public and not allowed.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let kind = not_public(ip)?;
        (!self.contains(ip)).then_some(kind)
    }
}

fn prefix(net: u128, addr: u128, bits: u8, width: u32) -> bool {
    let shift = width - u32::from(bits);
    bits == 0 || (net >> shift) == (addr >> shift)
}

/// What kind of non-public address `ip` is (None: public).
pub fn not_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() {
                Some("a private address")
            } else if v4.is_link_local() {
                Some("a link-local address (cloud metadata lives there)")
            } else if v4.is_unspecified() || a == 0 {
                Some("an unspecified address")
            } else if v4.is_broadcast() || v4.is_multicast() || a >= 240 {
                Some("a broadcast, multicast or reserved address")
            } else if a == 100 && (64..128).contains(&b) {
                Some("a shared (carrier-grade NAT) address")
            } else if v4.is_documentation() || (a == 192 && b == 0 && c == 0) || (a == 198 && (18..20).contains(&b)) {
                Some("a reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return not_public(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else if (seg[0] & 0xfe00) == 0xfc00 {
                Some("a private (unique local) address")
            } else if (seg[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() || (seg[0] == 0x2001 && seg[1] == 0x0db8) {
                Some("a multicast or reserved address")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b {
                // NAT64: the IPv4 address inside decides.
                let v4 = std::net::Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
                not_public(IpAddr::V4(v4))
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_unless_allowed() {
        let none = Allow::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(none.refuses(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "64:ff9b::101:101"] {
            assert!(none.refuses(ip.parse().unwrap()).is_none(), "{ip}");
        }
        let allow = Allow::parse(&["127.0.0.1".into(), "10.1.0.0/16".into()]).unwrap();
        assert!(allow.refuses("127.0.0.1".parse().unwrap()).is_none());
        assert!(allow.refuses("127.0.0.2".parse().unwrap()).is_some());
        assert!(allow.refuses("10.1.200.3".parse().unwrap()).is_none());
        assert!(allow.refuses("10.2.0.1".parse().unwrap()).is_some());
        assert!(Allow::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(Allow::parse(&["example.com".into()]).is_err());
    }
}
