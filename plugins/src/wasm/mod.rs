//! `wasm`: plugins written for the proxy-wasm ABI 0.2.1 (SPEC §12), the one Envoy, Istio,
//! APISIX and Kong load, so a plugin built with a proxy-wasm SDK runs here unchanged.
//!
//! A module is compiled once per change ([`module`]) and instantiated lazily on each worker
//! thread ([`Workers`]): a request uses its thread's instance, behind a lock that only the
//! requests of that thread (and, under work stealing, rarely a neighbour's) ever take, for
//! the length of one callback. Every callback is bounded by `timeout` and `max_memory`; a
//! fault ends the request with 500 `plugin_error` (or lets it pass, `fail_open: true`),
//! is counted in `gatehouse_plugin_errors_total{plugin}`, and drops that instance: the
//! next request on the worker starts a fresh one.

mod abi;
mod engine;
mod host;
mod lend;
mod module;
mod vm;

use crate::registry::{self, Config, ConfigError, PluginFactory};
use crate::units::{ByteSize, Span};
use crate::{Abort, Access, ErrorAnswer, Exchange, Flow, Plugin, Stage};
use abi::{Action, BufferType};
use bytes::Bytes;
use host::{CallAnswer, Callout, Effects, Facts};
use http::StatusCode;
use module::{Compiled, SharedData, Source};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use vm::{Fault, Outcome, Vm};

/// What the plugin's instances know of it.
pub struct PluginInfo {
    /// `plugin_name`, and the `plugin` label of its error count.
    pub name: Arc<str>,
    /// The plugin configuration (`proxy_on_configure` reads it).
    pub config: Vec<u8>,
    /// The VM configuration (`proxy_on_vm_start` reads it).
    pub vm_config: Vec<u8>,
    pub max_memory: usize,
    pub shared: SharedData,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    module: Source,
    /// Handed to `proxy_on_configure`: a string as it is, anything else as JSON.
    #[serde(default)]
    config: Config,
    #[serde(default)]
    vm_config: Config,
    /// The plugin's name (`plugin_name`, the metric label); the module's file name by default.
    name: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: Span,
    #[serde(default = "default_memory")]
    max_memory: ByteSize,
    #[serde(default)]
    fail_open: bool,
}

fn default_timeout() -> Span {
    Span::millis(10)
}

fn default_memory() -> ByteSize {
    ByteSize(16 << 20)
}

/// The smallest memory a module can have: one Wasm page.
const PAGE: usize = 64 << 10;

fn bytes_of(value: &Config) -> Vec<u8> {
    match value {
        Config::Null => Vec::new(),
        Config::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "wasm"
    }

    /// Loads and compiles the module, then starts one instance to check that the plugin
    /// accepts its configuration, so a plugin that would refuse it is refused here, alone,
    /// before any request meets it.
    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
        let settings: Settings = registry::decode(config)?;
        if settings.max_memory.0 < PAGE {
            return Err(ConfigError::new(
                "max_memory",
                "must be at least 64KiB, one Wasm page",
            ));
        }
        if settings.timeout.0.is_zero() {
            return Err(ConfigError::new("timeout", "must be more than zero"));
        }
        let compiled = module::load(&settings.module)?;
        let name = settings
            .name
            .clone()
            .unwrap_or_else(|| match &settings.module {
                Source::Path(path) => std::path::Path::new(path)
                    .file_stem()
                    .map_or_else(|| "wasm".to_string(), |s| s.to_string_lossy().into_owned()),
                Source::Remote { url, .. } => url.rsplit('/').next().unwrap_or("wasm").to_string(),
            });
        let info = Arc::new(PluginInfo {
            name: name.into(),
            config: bytes_of(&settings.config),
            vm_config: bytes_of(&settings.vm_config),
            max_memory: settings.max_memory.0,
            shared: SharedData::default(),
        });
        Vm::start(&compiled, info.clone(), settings.timeout.0).map_err(|fault| match fault {
            Fault::Refused(_) => ConfigError::new("config", fault.to_string()),
            other => ConfigError::new("module", other.to_string()),
        })?;
        Ok(Box::new(WasmPlugin {
            inner: Arc::new(Inner {
                workers: Workers::new(),
                info,
                compiled,
                timeout: settings.timeout.0,
                fail_open: settings.fail_open,
            }),
        }))
    }
}

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

/// One instance slot per worker thread.
struct Workers {
    slots: Box<[Mutex<Slot>]>,
}

#[derive(Default)]
struct Slot {
    vm: Option<Vm>,
    /// Counts the instances this slot has had, so a request knows whether the instance
    /// that holds its context is still the one in the slot.
    generation: u64,
}

/// How many instance slots a plugin has: one per core the gateway may run on.
static SLOTS: LazyLock<usize> = LazyLock::new(|| {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .clamp(1, 256)
});

thread_local! {
    static THREAD_SLOT: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

impl Workers {
    fn new() -> Workers {
        Workers {
            slots: (0..*SLOTS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The slot of the thread this runs on.
    fn here(&self) -> usize {
        THREAD_SLOT.with(|slot| *slot) % self.slots.len()
    }

    fn lock(&self, at: usize) -> MutexGuard<'_, Slot> {
        self.slots[at]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one request holds between phases: which instance has its context.
struct Stream {
    slot: usize,
    generation: u64,
    context: i32,
    facts: Option<Box<Facts>>,
    /// Body held back while the plugin buffers (it answered Pause).
    held: Vec<u8>,
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
}

/// Calls the root context's `proxy_on_tick` at the period it set, on slot `at`'s instance,
/// for as long as the plugin and that instance live.
fn start_ticks(plugin: Weak<Inner>, at: usize, generation: u64) {
    {
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
                    if slot.generation != generation {
                        return;
                    }
                    let Some(vm) = slot.vm.as_mut() else { return };
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
                if slot.generation != generation {
                    return;
                }
                let Some(vm) = slot.vm.as_mut() else { return };
                if let Err(fault) = vm.tick() {
                    tracing::warn!(plugin = &*inner.info.name, "proxy_on_tick failed: {fault}");
                    slot.vm = None;
                    return;
                }
            }
        });
    }
}

impl Inner {
    /// Drops the instance a fault left unusable (if it is still the slot's) and records
    /// the failure on the request.
    fn fault(&self, at: usize, generation: u64, fault: &Fault, ex: &mut Exchange) {
        let mut slot = self.workers.lock(at);
        if slot.generation == generation {
            slot.vm = None;
        }
        drop(slot);
        tracing::warn!(plugin = &*self.info.name, route = &*ex.route_id, "{fault}");
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
}

impl WasmPlugin {
    /// Runs `call` on the instance that holds the request's context; `None` when that
    /// instance is gone (a fault on another request dropped it), and the phase is skipped.
    fn with_stream<R>(
        &self,
        stream: &mut Stream,
        call: impl FnOnce(&mut Vm, &mut Stream) -> Result<R, Fault>,
    ) -> Option<Result<R, Fault>> {
        let mut slot = self.inner.workers.lock(stream.slot);
        if slot.generation != stream.generation {
            return None;
        }
        let vm = slot.vm.as_mut()?;
        Some(call(vm, stream))
    }

    /// The flow a callback's outcome asks for, before any HTTP call it made.
    fn settle(outcome: Outcome) -> Settled {
        let Effects {
            local,
            calls,
            continued,
        } = outcome.effects;
        if let Some(local) = local {
            return Settled::Done(Flow::Answer(local));
        }
        if outcome.action == Action::Pause && !continued && !calls.is_empty() {
            return Settled::Call(calls.into());
        }
        // A pause with nothing to wait for goes on: nothing could ever resume it.
        Settled::Done(Flow::Continue)
    }

    /// Makes the HTTP calls a paused request waits on, one after the other, and hands each
    /// answer to the plugin, until it answers the client, lets the request go on, or has
    /// nothing left to wait for.
    async fn calls(
        &self,
        mut calls: VecDeque<Callout>,
        req: &mut RequestHeader,
        ex: &mut Exchange,
    ) -> Flow {
        while let Some(call) = calls.pop_front() {
            let token = call.token;
            let answer = call_out(call).await;
            let Some(mut stream) = ex.take_kept::<Stream, _>(self) else {
                return Flow::Continue;
            };
            let outcome = self.with_stream(&mut stream, |vm, s| {
                vm.call_answered(s.context, token, req, &mut s.facts, answer)
            });
            let (slot, generation) = (stream.slot, stream.generation);
            ex.keep(self, stream);
            let outcome = match outcome {
                None => return Flow::Continue,
                Some(Ok(outcome)) => outcome,
                Some(Err(fault)) => {
                    self.inner.fault(slot, generation, &fault, ex);
                    ex.take_kept::<Stream, _>(self);
                    return self.inner.after_fault(&fault);
                }
            };
            let Effects {
                local,
                calls: more,
                continued,
            } = outcome.effects;
            if let Some(local) = local {
                return Flow::Answer(local);
            }
            if continued {
                return Flow::Continue;
            }
            calls.extend(more);
        }
        Flow::Continue
    }

    /// Shows a body piece to the plugin, holding pieces back while it buffers. The piece
    /// handed on is what the plugin left in the buffer.
    fn body(
        &self,
        kind: BufferType,
        body: &mut Option<Bytes>,
        end: bool,
        ex: &mut Exchange,
    ) -> Result<Option<Flow>, Fault> {
        let Some(mut stream) = ex.take_kept::<Stream, _>(self) else {
            return Ok(None);
        };
        if let Some(piece) = body.take() {
            stream.held.extend_from_slice(&piece);
        }
        if stream.held.len() > self.inner.info.max_memory {
            let (slot, generation) = (stream.slot, stream.generation);
            ex.keep(self, stream);
            let fault = Fault::OutOfMemory;
            self.inner.fault(slot, generation, &fault, ex);
            return Err(fault);
        }
        let outcome = self.with_stream(&mut stream, |vm, s| {
            vm.body(s.context, kind, &mut s.held, &mut s.facts, end)
        });
        let (slot, generation) = (stream.slot, stream.generation);
        let result = match outcome {
            None => {
                *body = Some(Bytes::from(std::mem::take(&mut stream.held)));
                Ok(None)
            }
            Some(Ok(outcome)) => {
                if outcome.action == Action::Pause && !end {
                    Ok(None)
                } else {
                    if !stream.held.is_empty() || end {
                        *body = Some(Bytes::from(std::mem::take(&mut stream.held)));
                    }
                    Ok(outcome.effects.local.map(Flow::Answer))
                }
            }
            Some(Err(fault)) => Err(fault),
        };
        ex.keep(self, stream);
        if let Err(fault) = &result {
            self.inner.fault(slot, generation, fault, ex);
        }
        result
    }
}

enum Settled {
    Done(Flow),
    Call(VecDeque<Callout>),
}

/// Whether a request head says no body follows.
fn bodiless(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0")
        && req.headers.get(http::header::TRANSFER_ENCODING).is_none()
}

impl Plugin for WasmPlugin {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn stage(&self) -> Stage {
        Stage::Admit
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        let inner = &self.inner;
        let at = inner.workers.here();
        let mut facts = Some(Box::new(Facts::of(req, ex)));
        let end_of_stream = bodiless(req);
        let mut slot = inner.workers.lock(at);
        let outcome = (|| {
            let vm = inner.instance(at, &mut slot)?;
            let context = vm.open()?;
            let outcome = vm.request_headers(context, req, &mut facts, end_of_stream)?;
            Ok((context, outcome))
        })();
        let generation = slot.generation;
        drop(slot);
        let (context, outcome) = match outcome {
            Ok(done) => done,
            Err(fault) => {
                inner.fault(at, generation, &fault, ex);
                return Access::Now(inner.after_fault(&fault));
            }
        };
        ex.keep(
            self,
            Stream {
                slot: at,
                generation,
                context,
                facts,
                held: Vec::new(),
            },
        );
        match Self::settle(outcome) {
            Settled::Done(flow) => Access::Now(flow),
            Settled::Call(calls) => Access::Wait(Box::pin(self.calls(calls, req, ex))),
        }
    }

    fn wants_request_body(&self) -> bool {
        self.inner.compiled.exports.request_body
    }

    fn request_body(&self, body: &mut Option<Bytes>, end: bool, ex: &mut Exchange) -> Flow {
        match self.body(BufferType::RequestBody, body, end, ex) {
            Ok(flow) => flow.unwrap_or(Flow::Continue),
            Err(fault) => self.inner.after_fault(&fault),
        }
    }

    fn upstream_request(&self, req: &mut RequestHeader, _ex: &Exchange) {
        // The plugin may change the body's length: it goes upstream chunked.
        if self.inner.compiled.exports.request_body
            && req.remove_header(&http::header::CONTENT_LENGTH).is_some()
        {
            let _ = req.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
    }

    fn response(&self, resp: &mut ResponseHeader, ex: &mut Exchange) {
        let exports = self.inner.compiled.exports;
        let Some(mut stream) = ex.take_kept::<Stream, _>(self) else {
            return;
        };
        if let Some(facts) = stream.facts.as_mut() {
            facts.status = Some(resp.status.as_u16());
        }
        let (slot, generation) = (stream.slot, stream.generation);
        let outcome = exports.response_headers.then(|| {
            self.with_stream(&mut stream, |vm, s| {
                vm.response_headers(s.context, resp, &mut s.facts, false)
            })
        });
        ex.keep(self, stream);
        match outcome.flatten() {
            Some(Err(fault)) => self.inner.fault(slot, generation, &fault, ex),
            Some(Ok(outcome)) if outcome.effects.local.is_some() => tracing::warn!(
                plugin = &*self.inner.info.name,
                "a local response after the upstream answered is not supported; the upstream's goes on"
            ),
            _ => {}
        }
        // The plugin may change the body's length: it goes to the client chunked.
        let status = resp.status.as_u16();
        if exports.response_body && !matches!(status, 100..=199 | 204 | 304) {
            resp.remove_header(&http::header::CONTENT_LENGTH);
            if resp.headers.get(http::header::TRANSFER_ENCODING).is_none() {
                let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
            }
        }
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
        match self.body(BufferType::ResponseBody, body, end, ex) {
            Ok(_) => Ok(()),
            Err(_) if self.inner.fail_open => Ok(()),
            Err(fault) => Err(Abort(format!(
                "plugin `{}` failed: {fault}",
                self.inner.info.name
            ))),
        }
    }

    fn log(&self, ex: &mut Exchange) {
        let Some(mut stream) = ex.take_kept::<Stream, _>(self) else {
            return;
        };
        let (slot, generation) = (stream.slot, stream.generation);
        if let Some(Err(fault)) =
            self.with_stream(&mut stream, |vm, s| vm.close(s.context, &mut s.facts))
        {
            self.inner.fault(slot, generation, &fault, ex);
        }
    }
}

/// The client for plugins' HTTP calls.
static CALLS: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client for plugin calls")
});

/// The most of a call's answer a plugin is shown.
const MAX_CALL_BODY: usize = 1 << 20;

/// Makes one plugin HTTP call; a failure is an answer with no headers, as Envoy gives.
async fn call_out(call: Callout) -> CallAnswer {
    let url = format!("http://{}{}", call.upstream, call.path);
    let mut request = CALLS
        .request(call.method.clone(), &url)
        .timeout(call.timeout);
    for (k, v) in &call.headers {
        request = request.header(k.as_slice(), v.as_slice());
    }
    if let Some(authority) = &call.authority {
        request = request.header(http::header::HOST, authority.as_str());
    }
    if !call.body.is_empty() {
        request = request.body(call.body.clone());
    }
    let answer = async {
        let mut resp = request.send().await.ok()?;
        let mut headers = vec![(
            b":status".to_vec(),
            resp.status().as_str().as_bytes().to_vec(),
        )];
        headers.extend(
            resp.headers()
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        let mut body = Vec::new();
        while let Some(piece) = resp.chunk().await.ok()? {
            let room = MAX_CALL_BODY.saturating_sub(body.len());
            body.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        Some(CallAnswer { headers, body })
    };
    match tokio::time::timeout(call.timeout, answer).await {
        Ok(Some(answer)) => answer,
        _ => CallAnswer::default(),
    }
}

#[cfg(test)]
mod tests;
