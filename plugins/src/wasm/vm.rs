//! One instance of a plugin's module: its store, its callbacks, and the contexts it holds.
//!
//! Every callback runs under the plugin's `timeout` (epoch deadline) and `max_memory`
//! (store limits); any fault leaves the instance unusable, and its owner drops it.

use super::abi::{Action, BufferType};
use super::engine::{engine, ticks};
use super::host::{CallAnswer, Callout, Effects, Facts, Host};
use super::lend::lend;
use super::module::Compiled;
use super::PluginInfo;
use pingora_http::{RequestHeader, ResponseHeader};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Instance, Store, StoreLimitsBuilder, Trap, TypedFunc};

/// The root context's id: the plugin itself, as opposed to a request.
pub const ROOT: i32 = 1;

/// Why a callback did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// It ran past `timeout`.
    Timeout,
    /// It grew memory past `max_memory`.
    OutOfMemory,
    /// It trapped (an `unreachable`, a bad memory access, a missing import called).
    Trap(String),
    /// `proxy_on_vm_start` or `proxy_on_configure` said no.
    Refused(&'static str),
    /// The instance that held the request's context was dropped after another request's
    /// fault.
    Lost,
    /// The plugin asked for more than the host gives one request.
    Limit(&'static str),
}

impl Fault {
    fn of(e: wasmtime::Error) -> Fault {
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return Fault::Timeout;
        }
        let text = format!("{e:#}");
        if text.contains("forcing trap when growing memory") {
            Fault::OutOfMemory
        } else {
            Fault::Trap(text)
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Timeout => f.write_str("a callback ran past its timeout"),
            Fault::OutOfMemory => f.write_str("the plugin grew its memory past max_memory"),
            Fault::Trap(e) => write!(f, "the plugin trapped: {e}"),
            Fault::Refused(what) => write!(f, "the plugin refused to start: {what} returned false"),
            Fault::Lost => f.write_str("the plugin's instance failed on another request"),
            Fault::Limit(what) => f.write_str(what),
        }
    }
}

/// What a stream callback answered and asked for.
pub struct Outcome {
    pub action: Action,
    pub effects: Effects,
}

impl Outcome {
    fn went_on() -> Outcome {
        Outcome {
            action: Action::Continue,
            effects: Effects::default(),
        }
    }
}

/// A stream callback: (context, size or count, end of stream) -> action.
type Stream3 = TypedFunc<(i32, i32, i32), i32>;
/// `proxy_on_http_call_response`: (context, token, headers, body size, trailers).
type CallResponse = TypedFunc<(i32, i32, i32, i32, i32), ()>;

struct Callbacks {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    tick: Option<TypedFunc<i32, ()>>,
    request_headers: Option<Stream3>,
    request_body: Option<Stream3>,
    response_headers: Option<Stream3>,
    response_body: Option<Stream3>,
    http_call_response: Option<CallResponse>,
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
}

pub struct Vm {
    store: Store<Host>,
    callbacks: Callbacks,
    /// Each callback's deadline, in epoch ticks.
    ticks: u64,
    next_context: i32,
    /// The request contexts made and not yet closed.
    open: HashSet<i32>,
}

impl Vm {
    /// Instantiates the module and starts the plugin: `proxy_on_vm_start`, then
    /// `proxy_on_configure` with the plugin's configuration. Start-up may take ten times a
    /// request callback's `timeout` (at least 100 ms): it parses configuration once.
    pub fn start(
        compiled: &Compiled,
        info: Arc<PluginInfo>,
        timeout: Duration,
    ) -> Result<Vm, Fault> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(info.max_memory)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(engine(), Host::new(info.clone(), limits));
        store.limiter(|host| &mut host.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks((timeout * 10).max(Duration::from_millis(100))));
        let instance = compiled.pre.instantiate(&mut store).map_err(Fault::of)?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = typed(&instance, &mut store, "proxy_on_memory_allocate")
            .or_else(|| typed(&instance, &mut store, "malloc"));
        let context_create = typed(&instance, &mut store, "proxy_on_context_create");
        let callbacks = Callbacks {
            context_create,
            tick: typed(&instance, &mut store, "proxy_on_tick"),
            request_headers: typed(&instance, &mut store, "proxy_on_request_headers"),
            request_body: typed(&instance, &mut store, "proxy_on_request_body"),
            response_headers: typed(&instance, &mut store, "proxy_on_response_headers"),
            response_body: typed(&instance, &mut store, "proxy_on_response_body"),
            http_call_response: typed(&instance, &mut store, "proxy_on_http_call_response"),
            done: typed(&instance, &mut store, "proxy_on_done"),
            log: typed(&instance, &mut store, "proxy_on_log"),
            delete: typed(&instance, &mut store, "proxy_on_delete"),
        };
        let host = store.data_mut();
        host.memory = memory;
        host.alloc = alloc;
        // A module built with a WASI runtime initialises it first.
        for init in ["_initialize", "_start"] {
            if let Some(f) = typed::<(), ()>(&instance, &mut store, init) {
                f.call(&mut store, ()).map_err(Fault::of)?;
                break;
            }
        }
        if let Some(create) = &callbacks.context_create {
            create.call(&mut store, (ROOT, 0)).map_err(Fault::of)?;
        }
        let start: Option<TypedFunc<(i32, i32), i32>> =
            typed(&instance, &mut store, "proxy_on_vm_start");
        if let Some(start) = start {
            let size = info.vm_config.len() as i32;
            if start.call(&mut store, (ROOT, size)).map_err(Fault::of)? == 0 {
                return Err(Fault::Refused("proxy_on_vm_start"));
            }
        }
        let configure: Option<TypedFunc<(i32, i32), i32>> =
            typed(&instance, &mut store, "proxy_on_configure");
        if let Some(configure) = configure {
            let size = info.config.len() as i32;
            if configure
                .call(&mut store, (ROOT, size))
                .map_err(Fault::of)?
                == 0
            {
                return Err(Fault::Refused("proxy_on_configure"));
            }
        }
        Ok(Vm {
            store,
            callbacks,
            ticks: ticks(timeout),
            next_context: ROOT + 1,
            open: HashSet::new(),
        })
    }

    /// The tick period the plugin asked for; zero for none.
    pub fn tick_period(&self) -> Duration {
        self.store.data().tick_period
    }

    /// Runs `call` under the deadline, with the request's facts in reach, and collects what
    /// it asked of the host.
    fn run<R>(
        &mut self,
        facts: &mut Option<Box<Facts>>,
        call: impl FnOnce(&mut Store<Host>) -> wasmtime::Result<R>,
    ) -> Result<(R, Effects), Fault> {
        self.store.set_epoch_deadline(self.ticks);
        self.store.data_mut().facts = facts.take();
        let result = call(&mut self.store);
        let host = self.store.data_mut();
        *facts = host.facts.take();
        let effects = std::mem::take(&mut host.effects);
        result.map(|r| (r, effects)).map_err(Fault::of)
    }

    /// Makes a context for a new request.
    pub fn open(&mut self) -> Result<i32, Fault> {
        let id = self.next_context;
        self.next_context = match self.next_context.checked_add(1) {
            Some(next) => next,
            None => ROOT + 1,
        };
        if let Some(f) = self.callbacks.context_create.clone() {
            self.run(&mut None, |store| f.call(store, (id, ROOT)))?;
        }
        self.open.insert(id);
        Ok(id)
    }

    /// Whether `context` is the root or a request's not yet closed.
    pub fn is_open(&self, context: i32) -> bool {
        context == ROOT || self.open.contains(&context)
    }

    pub fn request_headers(
        &mut self,
        context: i32,
        req: &mut RequestHeader,
        facts: &mut Option<Box<Facts>>,
        end_of_stream: bool,
    ) -> Result<Outcome, Fault> {
        let Some(f) = self.callbacks.request_headers.clone() else {
            return Ok(Outcome::went_on());
        };
        let count = req.headers.len() as i32;
        let (action, effects) = self.run(facts, |store| {
            lend(
                store,
                |s| &mut s.data_mut().request,
                req,
                |store| f.call(store, (context, count, end_of_stream as i32)),
            )
        })?;
        Ok(Outcome {
            action: Action::of(action),
            effects,
        })
    }

    pub fn response_headers(
        &mut self,
        context: i32,
        resp: &mut ResponseHeader,
        facts: &mut Option<Box<Facts>>,
        end_of_stream: bool,
    ) -> Result<Outcome, Fault> {
        let Some(f) = self.callbacks.response_headers.clone() else {
            return Ok(Outcome::went_on());
        };
        let count = resp.headers.len() as i32;
        let (action, effects) = self.run(facts, |store| {
            lend(
                store,
                |s| &mut s.data_mut().response,
                resp,
                |store| f.call(store, (context, count, end_of_stream as i32)),
            )
        })?;
        Ok(Outcome {
            action: Action::of(action),
            effects,
        })
    }

    /// Shows the body buffered so far; the plugin may rewrite it in place.
    pub fn body(
        &mut self,
        context: i32,
        kind: BufferType,
        body: &mut Vec<u8>,
        facts: &mut Option<Box<Facts>>,
        end_of_stream: bool,
    ) -> Result<Outcome, Fault> {
        let f = match kind {
            BufferType::RequestBody => self.callbacks.request_body.clone(),
            _ => self.callbacks.response_body.clone(),
        };
        let Some(f) = f else {
            return Ok(Outcome::went_on());
        };
        let size = body.len() as i32;
        let host = self.store.data_mut();
        host.body = std::mem::take(body);
        host.body_kind = Some(kind);
        let result = self.run(facts, |store| {
            f.call(store, (context, size, end_of_stream as i32))
        });
        let host = self.store.data_mut();
        *body = std::mem::take(&mut host.body);
        host.body_kind = None;
        let (action, effects) = result?;
        Ok(Outcome {
            action: Action::of(action),
            effects,
        })
    }

    /// Hands an HTTP call's answer to the context that made it; with the request's head,
    /// when it is still waiting for the answer.
    pub fn call_answered(
        &mut self,
        context: i32,
        token: u32,
        req: Option<&mut RequestHeader>,
        facts: &mut Option<Box<Facts>>,
        answer: CallAnswer,
    ) -> Result<Effects, Fault> {
        let Some(f) = self.callbacks.http_call_response.clone() else {
            return Ok(Effects::default());
        };
        let headers = answer.headers.len() as i32;
        let body = answer.body.len() as i32;
        self.store.data_mut().call_answer = Some(answer);
        let args = (context, token as i32, headers, body, 0);
        let result = self.run(facts, |store| match req {
            Some(req) => lend(
                store,
                |s| &mut s.data_mut().request,
                req,
                |store| f.call(store, args),
            ),
            None => f.call(store, args),
        });
        self.store.data_mut().call_answer = None;
        let ((), effects) = result?;
        Ok(effects)
    }

    /// Ends a request's context: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn close(&mut self, context: i32, facts: &mut Option<Box<Facts>>) -> Result<(), Fault> {
        self.open.remove(&context);
        let c = &self.callbacks;
        let (done, log, delete) = (c.done.clone(), c.log.clone(), c.delete.clone());
        self.run(facts, |store| {
            if let Some(done) = done {
                done.call(&mut *store, context)?;
            }
            if let Some(log) = log {
                log.call(&mut *store, context)?;
            }
            if let Some(delete) = delete {
                delete.call(&mut *store, context)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The root context's timer; the HTTP calls it dispatched.
    pub fn tick(&mut self) -> Result<Vec<Callout>, Fault> {
        match self.callbacks.tick.clone() {
            Some(tick) => Ok(self.run(&mut None, |store| tick.call(store, ROOT))?.1.calls),
            None => Ok(Vec::new()),
        }
    }
}

fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    instance: &Instance,
    store: &mut Store<Host>,
    name: &str,
) -> Option<TypedFunc<P, R>> {
    instance.get_typed_func(&mut *store, name).ok()
}
