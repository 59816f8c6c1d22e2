//! `ip_restriction`: who may call a route, by client address (SPEC §12). `deny` wins over
//! `allow`; with an `allow` list, an address outside it is refused too. Refused: 403
//! `forbidden`. The address is the gateway's client address (the socket peer, or per
//! `trusted_proxies`), never a header a client wrote.

use crate::registry::{self, Config, ConfigError, PluginFactory};
use crate::{Access, ErrorAnswer, Exchange, Flow, Plugin, Stage};
use http::StatusCode;
use ipnet::IpNet;
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::net::IpAddr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    allow: Vec<Net>,
    #[serde(default)]
    deny: Vec<Net>,
}

/// A CIDR, or a single address standing for itself.
#[derive(Debug)]
struct Net(IpNet);

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{text}` is not an address or CIDR (10.0.0.0/8, 2001:db8::/32)"
                ))
            })?;
        Ok(Net(net.trunc()))
    }
}

/// Refuses clients by address.
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpRestriction {
    fn admits(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen through an IPv6 socket is judged by its IPv4 address.
        let ip = ip.to_canonical();
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        "ip_restriction"
    }

    fn stage(&self) -> Stage {
        Stage::Admit
    }

    fn access<'a>(&'a self, _req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        if self.admits(ex.client_ip) {
            return Access::Now(Flow::Continue);
        }
        Access::Now(Flow::Respond(ErrorAnswer::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the client address may not call this route",
        )))
    }
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "ip_restriction"
    }

    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
        let settings: Settings = registry::decode(config)?;
        if settings.allow.is_empty() && settings.deny.is_empty() {
            return Err(ConfigError::new("", "give `allow`, `deny` or both"));
        }
        Ok(Box::new(IpRestriction {
            allow: settings.allow.into_iter().map(|n| n.0).collect(),
            deny: settings.deny.into_iter().map(|n| n.0).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verdict(config: Config, ip: &str) -> bool {
        let plugin = Factory.build(&config).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut ex = Exchange::new("r".into(), String::new(), ip.parse().unwrap());
        let admitted = match plugin.access(&mut req, &mut ex) {
            Access::Now(Flow::Continue) => true,
            Access::Now(Flow::Respond(answer)) => {
                assert_eq!(answer.status, 403);
                assert_eq!(answer.code, "forbidden");
                false
            }
            _ => panic!("unexpected flow"),
        };
        admitted
    }

    #[test]
    fn deny_wins_and_an_allow_list_refuses_everyone_else() {
        let config = json!({ "allow": ["10.0.0.0/8", "192.168.1.7"], "deny": ["10.9.0.0/16"] });
        assert!(verdict(config.clone(), "10.1.2.3"));
        assert!(verdict(config.clone(), "192.168.1.7"));
        assert!(!verdict(config.clone(), "192.168.1.8"));
        assert!(
            !verdict(config.clone(), "10.9.1.1"),
            "denied inside an allowed net"
        );
        assert!(verdict(config, "::ffff:10.1.2.3"), "v4 through a v6 socket");
        let deny_only = json!({ "deny": ["2001:db8::/32"] });
        assert!(!verdict(deny_only.clone(), "2001:db8::1"));
        assert!(verdict(deny_only, "127.0.0.1"));
    }

    #[test]
    fn a_bad_net_is_named_by_its_place() {
        let err = Factory
            .build(&json!({ "allow": ["10.0.0.0/8", "ten"] }))
            .err()
            .unwrap();
        assert_eq!(err.field, "allow[1]");
        assert!(err.message.contains("`ten` is not an address"), "{err}");
        assert!(Factory.build(&json!({})).is_err(), "nothing to restrict");
        assert_eq!(
            Factory
                .build(&json!({ "allowed": [] }))
                .err()
                .unwrap()
                .field,
            "allowed"
        );
    }
}
