//! The service model the datapath implements: frontends (virtual
//! addresses) translated to backends (real addresses).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A transport protocol the load balancer translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// The IP protocol number, as the kernel stores it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        }
    }

    /// The protocol with IP protocol number `n`, if the datapath handles it.
    pub fn from_number(n: u8) -> Option<Self> {
        match i32::from(n) {
            libc::IPPROTO_TCP => Some(Protocol::Tcp),
            libc::IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

impl FromStr for Protocol {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            _ => Err(ParseError(format!(
                "unknown protocol {s:?}: expected TCP or UDP"
            ))),
        }
    }
}

/// A virtual address clients connect to: `IP:port/PROTO` (also in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// Virtual IPv4 address and port.
    pub addr: SocketAddrV4,
    /// Transport protocol.
    pub proto: Protocol,
}

impl Frontend {
    /// A frontend at `ip:port/proto`.
    pub fn new(ip: Ipv4Addr, port: u16, proto: Protocol) -> Self {
        Frontend {
            addr: SocketAddrV4::new(ip, port),
            proto,
        }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.proto)
    }
}

/// Parses `IP:PORT/PROTO`, e.g. `10.96.0.10:53/UDP`.
fn parse_address(s: &str) -> Result<(SocketAddrV4, Protocol), ParseError> {
    let (addr, proto) = s
        .split_once('/')
        .ok_or_else(|| ParseError(format!("{s:?} is not IP:PORT/PROTO")))?;
    let addr = addr
        .parse()
        .map_err(|e| ParseError(format!("{addr:?} is not an IPv4 IP:PORT: {e}")))?;
    Ok((addr, proto.parse()?))
}

impl FromStr for Frontend {
    type Err = ParseError;

    /// Parses `IP:PORT/PROTO`, e.g. `10.96.0.10:53/UDP`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, proto) = parse_address(s)?;
        Ok(Frontend { addr, proto })
    }
}

impl FromStr for Backend {
    type Err = ParseError;

    /// Parses `IP:PORT/PROTO`, e.g. `10.244.1.5:8080/TCP`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, proto) = parse_address(s)?;
        Ok(Backend { addr, proto })
    }
}

/// Serializes a value as its `Display` text.
macro_rules! serde_as_text {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_text!(Frontend, Backend);

/// A real endpoint a frontend translates to: `IP:port/PROTO` (also in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Real IPv4 address and port.
    pub addr: SocketAddrV4,
    /// Transport protocol (the frontend's).
    pub proto: Protocol,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.proto)
    }
}

/// Text that does not name a frontend or protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_parses_and_prints() {
        let f: Frontend = "10.96.0.10:53/udp".parse().unwrap();
        assert_eq!(
            f,
            Frontend::new(Ipv4Addr::new(10, 96, 0, 10), 53, Protocol::Udp)
        );
        assert_eq!(f.to_string(), "10.96.0.10:53/UDP");
    }

    #[test]
    fn frontend_rejects_bad_text() {
        for bad in [
            "10.96.0.10:53",
            "10.96.0.10/TCP",
            "10.96.0.300:80/TCP",
            "1.2.3.4:80/SCTP",
        ] {
            let err = bad.parse::<Frontend>().unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad}");
        }
    }

    #[test]
    fn protocol_numbers_round_trip() {
        for p in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(Protocol::from_number(p.number()), Some(p));
        }
        assert_eq!(Protocol::from_number(132), None);
    }
}
