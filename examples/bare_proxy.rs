//! The floor gatehouse is measured against: a Pingora proxy that does nothing but forward
//! every request to one upstream, built with the same allocator and runtime settings as
//! gatehouse. Used by `benches/load/compare.sh`.
//!
//! Usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR [THREADS] [contract|grpc]
//!
//! With `contract`, it also does what SPEC §4 asks of every proxied request, the cheapest
//! way Pingora allows: upstream timeouts, `X-Request-Id` both ways and `X-Forwarded-*`,
//! the headers put into the heads as plain `http` maps with names parsed once (as gatehouse
//! does; Pingora's own `insert_header` costs about 2,000 instructions a header).
//! The difference between the two modes is the price of that contract; the difference
//! between `contract` and gatehouse is the price of gatehouse's own machinery.
//!
//! With `grpc`, it takes h2c from clients and speaks HTTP/2 by prior knowledge to the
//! upstream: the floor of a gRPC call through Pingora.

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use std::net::SocketAddr;
use std::time::Duration;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
    contract: bool,
    timeouts: bool,
    grpc: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = String;

    fn new_ctx(&self) -> String {
        String::new()
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut String,
    ) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.grpc {
            peer.options.set_http_version(2, 2);
        }
        if self.timeouts {
            peer.options.connection_timeout = Some(Duration::from_secs(5));
            peer.options.read_timeout = Some(Duration::from_secs(60));
            peer.options.write_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        id: &mut String,
    ) -> pingora::Result<()> {
        if self.contract {
            *id = format!("{:032x}", fastrand::u128(..));
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let host = session.req_header().headers.get("host").cloned();
            let id = HeaderValue::from_str(id).map_err(|_| bad_header())?;
            let peer = HeaderValue::try_from(peer).map_err(|_| bad_header())?;
            let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
            let mut parts: http::request::Parts = std::mem::replace(req, empty).into();
            let h = &mut parts.headers;
            h.reserve(4);
            h.insert(REQUEST_ID, id);
            h.insert(FORWARDED_FOR, peer);
            h.insert(FORWARDED_PROTO, HeaderValue::from_static("http"));
            if let Some(host) = host {
                h.insert(FORWARDED_HOST, host);
            }
            *req = RequestHeader::from(parts);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        id: &mut String,
    ) -> pingora::Result<()> {
        if self.contract {
            let id = HeaderValue::from_str(id).map_err(|_| bad_header())?;
            let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
            let mut parts: http::response::Parts = std::mem::replace(resp, empty).into();
            parts.headers.insert(REQUEST_ID, id);
            *resp = ResponseHeader::from(parts);
        }
        Ok(())
    }
}

fn bad_header() -> Box<pingora::Error> {
    pingora::Error::new(pingora::ErrorType::InvalidHTTPHeader)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR [THREADS] [contract|grpc]");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let contract = args
        .get(4)
        .is_some_and(|m| m == "contract" || m == "headers");
    let timeouts = args
        .get(4)
        .is_some_and(|m| m == "contract" || m == "timeouts");
    let grpc = args.get(4).is_some_and(|m| m == "grpc");
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let upstream = upstream.parse().expect("UPSTREAM_ADDR is ip:port");
    let mut logic = pingora::proxy::http_proxy(
        &server.configuration,
        Bare {
            upstream,
            contract,
            timeouts,
            grpc,
        },
    );
    if grpc {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        logic.server_options = Some(options);
    }
    let mut proxy = pingora::services::listening::Service::new("bare".to_string(), logic);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
