//! The `wasm` plugin on a route: a request's phases as proxy-wasm callbacks on its worker's
//! instance.
//!
//! A request's context lives in one instance from its headers to its log. When a callback
//! faults, that instance is dropped, and every request whose context it held fails the
//! same way at its next callback (500 `plugin_error`, or on with `fail_open`): a plugin
//! that filters or guards never lets a request pass unseen because a neighbour crashed it.

use super::abi::{Action, BufferType};
use super::callout::{self, MAX_PER_REQUEST};
use super::host::{Callout, Effects, Facts};
use super::module::Compiled;
use super::vm::{Fault, Vm, ROOT};
use super::workers::{Slot, Workers};
use super::PluginInfo;
use crate::{Abort, Access, ErrorAnswer, Exchange, Flow, LocalAnswer, Plugin, Stage};
use bytes::Bytes;
use http::StatusCode;
use pingora_http::{RequestHeader, ResponseHeader};
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A proxy-wasm plugin on a route.
pub struct WasmPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    info: Arc<PluginInfo>,
    compiled: Arc<Compiled>,
    timeout: Duration,
    fail_open: bool,
    workers: Workers,
}

/// What one request holds between phases: which instance has its context.
struct Stream {
    slot: usize,
    generation: u64,
    context: i32,
    facts: Option<Box<Facts>>,
    /// Body held back while the plugin buffers (it answered Pause).
    held: Vec<u8>,
    /// The request came with a body.
    had_body: bool,
    /// The plugin failed on this request and `fail_open` let it go on: the rest of it
    /// passes untouched.
    failed: bool,
}

/// What running a callback for a request came to.
enum Step<R> {
    /// The plugin has nothing to do with this request (any more).
    Skip,
    Done(R),
    /// The callback faulted, or the instance holding the request's context is gone; the
    /// failure is recorded.
    Failed(Fault),
}

impl WasmPlugin {
    pub(super) fn new(
        info: Arc<PluginInfo>,
        compiled: Arc<Compiled>,
        timeout: Duration,
        fail_open: bool,
    ) -> WasmPlugin {
        WasmPlugin {
            inner: Arc::new(Inner {
                info,
                compiled,
                timeout,
                fail_open,
                workers: Workers::new(),
            }),
        }
    }

    /// Starts one instance and lets it go: whether the plugin accepts its configuration.
    pub(super) fn probe(&self) -> Result<(), Fault> {
        let inner = &self.inner;
        Vm::start(&inner.compiled, inner.info.clone(), inner.timeout).map(drop)
    }

    /// Runs `call` on the instance that holds the request's context.
    fn step<R>(
        &self,
        ex: &mut Exchange,
        call: impl FnOnce(&mut Vm, &mut Stream) -> Result<R, Fault>,
    ) -> Step<R> {
        let Some(stream) = ex.kept_mut::<Stream, _>(self) else {
            return Step::Skip;
        };
        if stream.failed {
            return Step::Skip;
        }
        let generation = stream.generation;
        let mut slot = self.inner.workers.lock(stream.slot);
        let result = match slot.current(generation).map(|vm| call(vm, stream)) {
            None => Err(Fault::Lost),
            Some(Ok(done)) => Ok(done),
            Some(Err(fault)) => {
                slot.drop_instance(generation);
                Err(fault)
            }
        };
        drop(slot);
        match result {
            Ok(done) => Step::Done(done),
            Err(fault) => {
                stream.failed = true;
                self.inner.failed(ex, &fault);
                Step::Failed(fault)
            }
        }
    }

    /// Makes the HTTP calls a paused request waits on, one after the other, and hands each
    /// answer to the plugin, until it answers the client, lets the request go on, or has
    /// nothing left to wait for.
    async fn wait_for_calls(
        &self,
        mut calls: VecDeque<Callout>,
        req: &mut RequestHeader,
        ex: &mut Exchange,
    ) -> Flow {
        let framing = Framing::of(req);
        let mut made = 0;
        while let Some(call) = calls.pop_front() {
            made += 1;
            if made > MAX_PER_REQUEST {
                let fault = Fault::Limit("more than 16 HTTP calls for one request");
                if let Some(stream) = ex.kept_mut::<Stream, _>(self) {
                    stream.failed = true;
                }
                self.inner.failed(ex, &fault);
                return self.inner.after_fault(&fault);
            }
            let token = call.token;
            let answer = callout::make(call).await;
            let step = self.step(ex, |vm, s| {
                vm.call_answered(s.context, token, Some(&mut *req), &mut s.facts, answer)
            });
            framing.restore(req);
            let effects = match step {
                Step::Skip => return Flow::Continue,
                Step::Failed(fault) => return self.inner.after_fault(&fault),
                Step::Done(effects) => effects,
            };
            if let Some(local) = effects.local {
                return Flow::Answer(local);
            }
            calls.extend(effects.calls);
            if effects.continued {
                // Calls still queued are made, but the request no longer waits for them.
                if let Some(s) = ex.kept::<Stream, _>(self) {
                    self.inner
                        .detach(s.slot, s.generation, s.context, calls.into());
                }
                return Flow::Continue;
            }
        }
        Flow::Continue
    }

    /// Shows a body piece to the plugin, holding pieces back while it buffers (it answered
    /// Pause). What goes on is what the plugin left in the buffer; on a failure, whatever
    /// was held goes on as it came (for `fail_open`; otherwise the request ends anyway).
    fn body(
        &self,
        kind: BufferType,
        body: &mut Option<Bytes>,
        end: bool,
        ex: &mut Exchange,
    ) -> Result<Option<LocalAnswer>, Fault> {
        let Some(stream) = ex.kept_mut::<Stream, _>(self) else {
            return Ok(None);
        };
        if stream.failed {
            return Ok(None);
        }
        if let Some(piece) = body.take() {
            stream.held.extend_from_slice(&piece);
        }
        if stream.held.len() > self.inner.info.max_memory {
            // The host's own bound: this request fails; the instance is sound.
            *body = Some(Bytes::from(std::mem::take(&mut stream.held)));
            stream.failed = true;
            let fault = Fault::Limit("the body held back grew past max_memory");
            self.inner.failed(ex, &fault);
            return Err(fault);
        }
        let step = self.step(ex, |vm, s| {
            vm.body(s.context, kind, &mut s.held, &mut s.facts, end)
        });
        let Some(stream) = ex.kept_mut::<Stream, _>(self) else {
            return Ok(None);
        };
        let held = std::mem::take(&mut stream.held);
        let (slot, generation, context) = (stream.slot, stream.generation, stream.context);
        match step {
            Step::Skip => {
                *body = Some(Bytes::from(held));
                Ok(None)
            }
            Step::Failed(fault) => {
                *body = Some(Bytes::from(held));
                Err(fault)
            }
            Step::Done(outcome) => {
                if outcome.action == Action::Pause && !end {
                    stream.held = held;
                    // Nothing goes on yet. An empty request piece tells Pingora exactly that
                    // (`None` would end the body upstream); an absent response piece writes
                    // nothing.
                    *body = (kind == BufferType::RequestBody).then(Bytes::new);
                } else {
                    *body = Some(Bytes::from(held));
                }
                self.inner
                    .detach(slot, generation, context, outcome.effects.calls);
                Ok(outcome.effects.local)
            }
        }
    }
}

impl Inner {
    /// The running instance of slot `at`, started if there is none.
    fn instance<'s>(self: &Arc<Self>, at: usize, slot: &'s mut Slot) -> Result<&'s mut Vm, Fault> {
        if slot.vm.is_none() {
            let vm = Vm::start(&self.compiled, self.info.clone(), self.timeout)?;
            slot.generation += 1;
            if !vm.tick_period().is_zero() {
                start_ticks(Arc::downgrade(self), at, slot.generation);
            }
            slot.vm = Some(vm);
        }
        Ok(slot.vm.as_mut().expect("started above"))
    }

    /// Records that the plugin failed on this request.
    fn failed(&self, ex: &mut Exchange, fault: &Fault) {
        tracing::warn!(
            plugin = &*self.info.name,
            route = &*ex.route_id,
            request_id = %ex.request_id,
            "{fault}"
        );
        ex.plugin_failed(&self.info.name);
    }

    /// The request's fate after a fault: 500 `plugin_error`, or on with `fail_open`.
    fn after_fault(&self, fault: &Fault) -> Flow {
        if self.fail_open {
            Flow::Continue
        } else {
            Flow::Respond(ErrorAnswer::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "plugin_error",
                format!("plugin `{}` failed: {fault}", self.info.name),
            ))
        }
    }

    /// Makes HTTP calls nobody waits for (dispatched by a callback that did not pause, or
    /// by a timer) and hands their answers to the context that made them, while it lives.
    fn detach(self: &Arc<Self>, at: usize, generation: u64, context: i32, calls: Vec<Callout>) {
        if calls.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(plugin = &*self.info.name, "HTTP calls dropped: no runtime");
            return;
        };
        let plugin = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut queue: VecDeque<Callout> = calls.into();
            let mut made = 0;
            while let Some(call) = queue.pop_front() {
                made += 1;
                if made > MAX_PER_REQUEST {
                    return;
                }
                let token = call.token;
                let answer = callout::make(call).await;
                let Some(inner) = plugin.upgrade() else {
                    return;
                };
                let mut slot = inner.workers.lock(at);
                let Some(vm) = slot.current(generation) else {
                    return;
                };
                if !vm.is_open(context) {
                    return;
                }
                match vm.call_answered(context, token, None, &mut None, answer) {
                    Ok(effects) => queue.extend(effects.calls),
                    Err(fault) => {
                        slot.drop_instance(generation);
                        tracing::warn!(
                            plugin = &*inner.info.name,
                            "an HTTP call's answer failed: {fault}"
                        );
                        return;
                    }
                }
            }
        });
    }
}

/// Calls the root context's `proxy_on_tick` at the period it set, on slot `at`'s instance,
/// for as long as the plugin and that instance live.
fn start_ticks(plugin: Weak<Inner>, at: usize, generation: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            let period = {
                let Some(inner) = plugin.upgrade() else {
                    return;
                };
                let mut slot = inner.workers.lock(at);
                let Some(vm) = slot.current(generation) else {
                    return;
                };
                vm.tick_period()
            };
            if period.is_zero() {
                return;
            }
            tokio::time::sleep(period).await;
            let Some(inner) = plugin.upgrade() else {
                return;
            };
            let mut slot = inner.workers.lock(at);
            let Some(vm) = slot.current(generation) else {
                return;
            };
            match vm.tick() {
                Ok(calls) => {
                    drop(slot);
                    inner.detach(at, generation, ROOT, calls);
                }
                Err(fault) => {
                    slot.drop_instance(generation);
                    tracing::warn!(plugin = &*inner.info.name, "proxy_on_tick failed: {fault}");
                    return;
                }
            }
        }
    });
}

/// How the client frames its body (`Content-Length`, `Transfer-Encoding`), as it sent it.
///
/// The body is read by these headers, so a plugin's edit of them (an Envoy plugin drops
/// `content-length` before it changes the body) must not change how the client's bytes are
/// read: they are put back as they came, and the body goes upstream chunked instead
/// ([`Plugin::upstream_request`]).
struct Framing {
    length: Option<http::HeaderValue>,
    encoding: Option<http::HeaderValue>,
}

impl Framing {
    fn of(req: &RequestHeader) -> Framing {
        Framing {
            length: req.headers.get(http::header::CONTENT_LENGTH).cloned(),
            encoding: req.headers.get(http::header::TRANSFER_ENCODING).cloned(),
        }
    }

    fn restore(&self, req: &mut RequestHeader) {
        for (name, value) in [
            (http::header::CONTENT_LENGTH, &self.length),
            (http::header::TRANSFER_ENCODING, &self.encoding),
        ] {
            if req.headers.get(&name) == value.as_ref()
                && req.headers.get_all(&name).iter().count() <= 1
            {
                continue;
            }
            req.remove_header(&name);
            if let Some(value) = value {
                let _ = req.insert_header(name, value.clone());
            }
        }
    }
}

/// Whether a request head says no body follows. Over HTTP/2 a body needs no length, so
/// only a declared empty one counts.
fn bodiless(req: &RequestHeader) -> bool {
    let length = req.headers.get(http::header::CONTENT_LENGTH);
    if req.version == http::Version::HTTP_2 {
        return length.is_some_and(|v| v.as_bytes() == b"0");
    }
    length.is_none_or(|v| v.as_bytes() == b"0")
        && req.headers.get(http::header::TRANSFER_ENCODING).is_none()
}

impl Plugin for WasmPlugin {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn stage(&self) -> Stage {
        Stage::Admit
    }

    /// A module may pause a request on its HTTP calls.
    fn may_wait(&self) -> bool {
        true
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        let inner = &self.inner;
        let at = inner.workers.here();
        let mut facts = Some(Box::new(Facts::of(req, ex)));
        let end_of_stream = bodiless(req);
        let framing = Framing::of(req);
        let mut slot = inner.workers.lock(at);
        let result = inner.instance(at, &mut slot).and_then(|vm| {
            let context = vm.open()?;
            let outcome = vm.request_headers(context, req, &mut facts, end_of_stream)?;
            Ok((context, outcome))
        });
        let generation = slot.generation;
        if result.is_err() {
            slot.drop_instance(generation);
        }
        drop(slot);
        let (context, outcome) = match result {
            Ok(done) => done,
            Err(fault) => {
                inner.failed(ex, &fault);
                return Access::Now(inner.after_fault(&fault));
            }
        };
        framing.restore(req);
        ex.keep(
            self,
            Stream {
                slot: at,
                generation,
                context,
                facts,
                held: Vec::new(),
                had_body: !end_of_stream,
                failed: false,
            },
        );
        let Effects {
            local,
            calls,
            continued,
        } = outcome.effects;
        if let Some(local) = local {
            return Access::Now(Flow::Answer(local));
        }
        if outcome.action == Action::Pause && !continued && !calls.is_empty() {
            return Access::Wait(Box::pin(self.wait_for_calls(calls.into(), req, ex)));
        }
        // A pause with nothing to wait for goes on: nothing could ever resume it.
        inner.detach(at, generation, context, calls);
        Access::Now(Flow::Continue)
    }

    fn wants_request_body(&self) -> bool {
        self.inner.compiled.exports.request_body
    }

    fn request_body(&self, body: &mut Option<Bytes>, end: bool, ex: &mut Exchange) -> Flow {
        match self.body(BufferType::RequestBody, body, end, ex) {
            Ok(None) => Flow::Continue,
            Ok(Some(local)) => Flow::Answer(local),
            Err(fault) => self.inner.after_fault(&fault),
        }
    }

    fn upstream_request(&self, req: &mut RequestHeader, ex: &Exchange) {
        // The plugin may change the body's length: it goes upstream chunked.
        if !self.inner.compiled.exports.request_body {
            return;
        }
        if ex
            .kept::<Stream, _>(self)
            .is_some_and(|s| s.had_body && !s.failed)
        {
            req.remove_header(&http::header::CONTENT_LENGTH);
            if req.headers.get(http::header::TRANSFER_ENCODING).is_none() {
                let _ = req.insert_header(http::header::TRANSFER_ENCODING, "chunked");
            }
        }
    }

    fn response(&self, resp: &mut ResponseHeader, ex: &mut Exchange) -> Flow {
        let status = resp.status.as_u16();
        if status < 200 {
            // An interim answer (100 Continue, 103 Early Hints): the plugin sees the final one.
            return Flow::Continue;
        }
        let exports = self.inner.compiled.exports;
        if let Some(facts) = ex
            .kept_mut::<Stream, _>(self)
            .and_then(|s| s.facts.as_mut())
        {
            facts.status = Some(status);
        }
        if exports.response_headers {
            let step = self.step(ex, |vm, s| {
                vm.response_headers(s.context, resp, &mut s.facts, false)
                    .map(|outcome| (outcome, s.slot, s.generation, s.context))
            });
            match step {
                Step::Skip => {}
                Step::Failed(fault) => {
                    let flow = self.inner.after_fault(&fault);
                    if !matches!(flow, Flow::Continue) {
                        return flow;
                    }
                }
                Step::Done((outcome, slot, generation, context)) => {
                    self.inner
                        .detach(slot, generation, context, outcome.effects.calls);
                    if let Some(local) = outcome.effects.local {
                        return Flow::Answer(local);
                    }
                }
            }
        }
        // The plugin may change the body's length: it goes to the client chunked.
        let active = ex.kept::<Stream, _>(self).is_some_and(|s| !s.failed);
        if exports.response_body && active && !matches!(status, 204 | 304) {
            resp.remove_header(&http::header::CONTENT_LENGTH);
            if resp.headers.get(http::header::TRANSFER_ENCODING).is_none() {
                let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
            }
        }
        Flow::Continue
    }

    fn wants_response_body(&self) -> bool {
        self.inner.compiled.exports.response_body
    }

    fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        ex: &mut Exchange,
    ) -> Result<(), Abort> {
        let name = &self.inner.info.name;
        match self.body(BufferType::ResponseBody, body, end, ex) {
            Ok(None) => Ok(()),
            // The head is gone: an answer of the plugin's own can only cut the response.
            Ok(Some(_)) => Err(Abort(format!(
                "plugin `{name}` answered after the response head was sent"
            ))),
            Err(_) if self.inner.fail_open => Ok(()),
            Err(fault) => Err(Abort(format!("plugin `{name}` failed: {fault}"))),
        }
    }

    fn log(&self, ex: &mut Exchange) {
        let Some(mut stream) = ex.take_kept::<Stream, _>(self) else {
            return;
        };
        if stream.failed {
            return;
        }
        let mut slot = self.inner.workers.lock(stream.slot);
        // An instance dropped since has taken the context with it.
        let Some(vm) = slot.current(stream.generation) else {
            return;
        };
        if let Err(fault) = vm.close(stream.context, &mut stream.facts) {
            slot.drop_instance(stream.generation);
            drop(slot);
            self.inner.failed(ex, &fault);
        }
    }
}
