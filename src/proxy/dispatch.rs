//! What a matched route does with a request: its access plugins (auth, limits) may answer
//! for it, a direct response answers it, or an upstream is chosen for it.

use super::answer::{self, answer_error, Answer};
use super::attempt::Attempts;
use super::ctx::{RequestCtx, WebSocket};
use super::Gateway;
use crate::edge::departure::{self, Watch};
use crate::snapshot::{Action, CompiledRoute};
use gatehouse_plugins::{ErrorAnswer, Exchange, Flow, PluginChain};
use http::{Method, StatusCode};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession as HttpServerSession;
use pingora::proxy::Session;
use pingora::Result;
use std::sync::Arc;

impl Gateway {
    /// Runs the route on the request; `true` once the request is answered here.
    pub(super) async fn enter_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Arc<CompiledRoute>,
    ) -> Result<bool> {
        ctx.exchange.route_id = route.id.clone();
        // Each write to the client is bounded too: one that stops reading cannot hold the
        // request (and its place under a concurrency limit) for ever.
        session
            .as_downstream_mut()
            .set_write_timeout(Some(route.timeouts.write));
        let route = &*ctx.route.insert(route);
        if !route.plugins.is_empty() {
            let Some(flow) = access(session, &route.plugins, &mut ctx.exchange).await else {
                return answer::client_left();
            };
            // The plugins may have waited (an introspection call) while a drain began.
            if self.settings.draining.is_on() {
                session.set_keepalive(None);
            }
            match flow {
                Flow::Continue => {}
                Flow::Respond(reply) => return answer_error(session, &reply, ctx).await,
                Flow::Answer(local) => {
                    let answer = Answer::local(&local);
                    answer::send(session, answer, &mut ctx.exchange, Some(&route.plugins)).await?;
                    return Ok(true);
                }
            }
        }
        match &route.action {
            Action::Proxy(choice) => {
                if ctx.websocket == WebSocket::Asked && route.spec.websocket {
                    // The handshake's own headers, dropped on arrival with every hop-by-hop
                    // one, go upstream for a route that takes WebSocket.
                    let req = session.req_header_mut();
                    req.insert_header(http::header::UPGRADE, "websocket")?;
                    req.insert_header(http::header::CONNECTION, "Upgrade")?;
                    ctx.websocket = WebSocket::Sent;
                }
                // Chosen once: retries go to other nodes of the same upstream.
                let upstream = choice.choose(session.req_header(), &ctx.exchange).clone();
                if let Some(transcoder) = route.transcoder.clone() {
                    return self.transcode(session, ctx, transcoder, upstream).await;
                }
                if upstream.spec.scheme.grpc() && !answer::is_grpc(session.req_header()) {
                    // A gRPC server answers nothing else; such a request would only end in a
                    // reset stream, blamed on a healthy node.
                    let reply = ErrorAnswer::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        "this route takes gRPC calls: HTTP/2 and content-type application/grpc",
                    );
                    return answer_error(session, &reply, ctx).await;
                }
                ctx.attempts = Some(Attempts::new(upstream, route.retries));
                Ok(false)
            }
            Action::Respond(direct) => {
                let answer = Answer::local(direct);
                answer::send(session, answer, &mut ctx.exchange, Some(&route.plugins)).await?;
                Ok(true)
            }
        }
    }
}

/// The route's access plugins on the request; `None` when the client left while they waited
/// (a fault delay, an introspection call…), their wait then dropped.
async fn access(session: &mut Session, plugins: &PluginChain, ex: &mut Exchange) -> Option<Flow> {
    if !plugins.may_wait() {
        return Some(plugins.access(session.req_header_mut(), ex).await);
    }
    if let HttpServerSession::H2(stream) = session.as_downstream_mut() {
        // The stream's reset notice needs the session: the plugins get the head, taken out
        // of it for the wait and put back after.
        let Ok(stand_in) = RequestHeader::build_no_case(Method::GET, b"/", Some(0)) else {
            return Some(plugins.access(stream.req_header_mut(), ex).await);
        };
        let mut head = std::mem::replace(stream.req_header_mut(), stand_in);
        let watch = Watch::Stream(stream.idle());
        let flow = departure::unless_client_leaves(watch, plugins.access(&mut head, ex)).await;
        *stream.req_header_mut() = head;
        return flow;
    }
    let watch = Watch::of_connection(session.as_downstream());
    departure::unless_client_leaves(watch, plugins.access(session.req_header_mut(), ex)).await
}
