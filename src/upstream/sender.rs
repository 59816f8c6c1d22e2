//! Requests the gateway sends to an upstream on a plugin's behalf, off the request path (a
//! mirror's copies): to a healthy node (in the copy's lane, with `lanes`), over the
//! upstream's TLS and pools like proxied requests, the answer read to its end and dropped.

use super::UpstreamTarget;
use gatehouse_plugins::registry::UpstreamSender;
use gatehouse_plugins::Exchange;
use pingora::connectors::http::Connector;
use pingora_http::RequestHeader;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// The connections of the requests sent for plugins, pooled apart from the proxy's.
static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

/// An upstream as a plugin sends to it.
pub struct Sender(pub Arc<UpstreamTarget>);

impl UpstreamSender for Sender {
    fn send(
        &self,
        head: RequestHeader,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<u16, String>> + Send>> {
        let target = self.0.clone();
        Box::pin(async move {
            tokio::time::timeout(timeout, send(&target, head, body, timeout))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
        })
    }
}

async fn send(
    target: &UpstreamTarget,
    mut head: RequestHeader,
    body: bytes::Bytes,
    timeout: Duration,
) -> Result<u16, String> {
    let ex = Exchange::new(
        target.id.clone(),
        String::new(),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    );
    // A copy is refused as a request would be: past the upstream's concurrency limit or
    // with its circuit open (a copy never probes a circuit).
    let _permit = match &target.concurrency {
        Some(limit) => Some(
            limit
                .acquire()
                .ok_or("the upstream has its concurrency limit in flight")?,
        ),
        None => None,
    };
    if target.breaker.as_ref().is_some_and(|b| b.is_open()) {
        return Err("the upstream's circuit is open".into());
    }
    let lane = target.lane(&head).map_err(|e| format!("{e:?}"))?;
    let lane = lane.as_ref().and_then(|l| l.name.as_deref());
    let node = target
        .pick_in(lane, &head, &ex, None)
        .ok_or("no healthy node")?;
    let mut peer = target.peer(node.addr, None);
    peer.options.connection_timeout = Some(timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    if peer.options.alpn.get_max_http_version() == 1 {
        head.set_version(http::Version::HTTP_11);
    }
    let (mut session, _) = CONNECTOR
        .get_http_session(&peer)
        .await
        .map_err(|e| e.to_string())?;
    let exchanged = async {
        session.write_request_header(Box::new(head)).await?;
        session.write_request_body(body, true).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        while session.read_response_body().await?.is_some() {}
        Ok::<_, Box<pingora::Error>>(session.response_header().map_or(0, |r| r.status.as_u16()))
    };
    match exchanged.await {
        Ok(status) => {
            CONNECTOR
                .release_http_session(session, &peer, target.idle_timeout)
                .await;
            Ok(status)
        }
        Err(e) => {
            target.failed(&node);
            Err(e.to_string())
        }
    }
}
