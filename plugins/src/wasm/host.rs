//! What a Wasm instance's host functions see: the store's data ([`Host`]) and the functions
//! themselves, linked once per engine under the ABI's names.
//!
//! Every function answers a [`Status`]; a bad pointer is `InvalidMemoryAccess`, never a
//! panic. A fault inside the module (its allocator trapping, say) is passed on as a trap.

use super::abi::{self, BufferType, MapType, Status};
use super::callout;
use super::lend::Lend;
use super::PluginInfo;
use crate::LocalAnswer;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wasmtime::{Caller, Extern, Linker, Memory, StoreLimits, TypedFunc};

/// What the host knows of one request, for `proxy_get_property`; copied once, when the
/// request's context is made, so the response phases can still answer `request.path`.
#[derive(Debug, Clone)]
pub struct Facts {
    pub method: Method,
    /// Path and query, as received.
    pub path: String,
    pub host: String,
    pub scheme: &'static str,
    pub protocol: &'static str,
    pub request_id: String,
    pub route_id: Arc<str>,
    pub client_ip: IpAddr,
    /// The response status, once a response head was seen.
    pub status: Option<u16>,
}

impl Facts {
    pub fn of(req: &RequestHeader, ex: &crate::Exchange) -> Facts {
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        Facts {
            method: req.method.clone(),
            path: req
                .uri
                .path_and_query()
                .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string()),
            host,
            scheme: if req.uri.scheme_str() == Some("https") {
                "https"
            } else {
                "http"
            },
            protocol: match req.version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2",
                _ => "HTTP/1.1",
            },
            request_id: ex.request_id.clone(),
            route_id: ex.route_id.clone(),
            client_ip: ex.client_ip,
            status: None,
        }
    }
}

/// An HTTP call a plugin dispatched, to be made once its callback returns.
#[derive(Debug, Clone)]
pub struct Callout {
    pub token: u32,
    /// `host:port`.
    pub upstream: String,
    pub method: Method,
    pub path: String,
    pub authority: Option<String>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// An HTTP call's answer, while `proxy_on_http_call_response` runs.
#[derive(Debug, Default)]
pub struct CallAnswer {
    /// `:status` first, then the headers; empty when the call failed.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// What a callback asked of the host besides its return value.
#[derive(Debug, Default)]
pub struct Effects {
    /// `proxy_send_local_response`: answer the client with this.
    pub local: Option<LocalAnswer>,
    /// `proxy_continue_stream`: a paused stream may go on.
    pub continued: bool,
    /// `proxy_http_call`s to make.
    pub calls: Vec<Callout>,
}

/// The data of one instance's store.
pub struct Host {
    pub limits: StoreLimits,
    pub info: Arc<PluginInfo>,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<i32, i32>>,
    /// The request head, during request-phase callbacks.
    pub request: Lend<RequestHeader>,
    /// The response head, during response-phase callbacks.
    pub response: Lend<ResponseHeader>,
    /// The body buffered so far, during a body callback, and which body it is.
    pub body: Vec<u8>,
    pub body_kind: Option<BufferType>,
    pub call_answer: Option<CallAnswer>,
    pub facts: Option<Box<Facts>>,
    pub effects: Effects,
    /// `proxy_set_tick_period_milliseconds`, zero for none.
    pub tick_period: Duration,
    next_token: u32,
}

impl Host {
    pub fn new(info: Arc<PluginInfo>, limits: StoreLimits) -> Host {
        Host {
            limits,
            info,
            memory: None,
            alloc: None,
            request: Lend::default(),
            response: Lend::default(),
            body: Vec::new(),
            body_kind: None,
            call_answer: None,
            facts: None,
            effects: Effects::default(),
            tick_period: Duration::ZERO,
            next_token: 0,
        }
    }
}

type Ctx<'a> = Caller<'a, Host>;
type Answer = wasmtime::Result<i32>;

fn status(s: Status) -> Answer {
    Ok(s as i32)
}

/// The answer of a host function whose work is done or failed with a status.
fn done(result: Result<(), Status>) -> Answer {
    status(result.err().unwrap_or(Status::Ok))
}

fn memory(caller: &mut Ctx<'_>) -> Option<Memory> {
    if let Some(memory) = caller.data().memory {
        return Some(memory);
    }
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => {
            caller.data_mut().memory = Some(memory);
            Some(memory)
        }
        _ => None,
    }
}

/// Copies `len` bytes at `ptr` out of the module's memory.
fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = memory(caller).ok_or(Status::InvalidMemoryAccess)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = memory.data(&*caller);
    let end = ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    data.get(ptr..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = memory(caller).ok_or(Status::InvalidMemoryAccess)?;
    memory
        .write(&mut *caller, ptr as u32 as usize, bytes)
        .map_err(|_| Status::InvalidMemoryAccess)
}

fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the module: memory from its allocator, then the pointer and length
/// written where it asked. An allocator that traps fails the callback.
fn give(caller: &mut Ctx<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> Answer {
    let mut at = 0;
    if !bytes.is_empty() {
        let Some(alloc) = caller.data().alloc.clone() else {
            return status(Status::InternalFailure);
        };
        at = alloc.call(&mut *caller, bytes.len() as i32)?;
        if at == 0 {
            return status(Status::InternalFailure);
        }
        if let Err(s) = write(caller, at, bytes) {
            return status(s);
        }
    }
    match write_u32(caller, ret_ptr, at as u32)
        .and_then(|_| write_u32(caller, ret_len, bytes.len() as u32))
    {
        Ok(()) => status(Status::Ok),
        Err(s) => status(s),
    }
}

/// Runs `f` on the bytes at (`ptr`, `len`), or answers the memory fault.
macro_rules! bytes_or_fault {
    ($caller:expr, $ptr:expr, $len:expr) => {
        match read($caller, $ptr, $len) {
            Ok(bytes) => bytes,
            Err(s) => return status(s),
        }
    };
}

// ---- header maps ----

fn header_name(key: &[u8]) -> Result<HeaderName, Status> {
    HeaderName::from_bytes(key).map_err(|_| Status::BadArgument)
}

fn header_value(value: &[u8]) -> Result<HeaderValue, Status> {
    HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)
}

fn request_pseudo(req: &RequestHeader, key: &[u8]) -> Option<Vec<u8>> {
    Some(match key {
        b":method" => req.method.as_str().as_bytes().to_vec(),
        b":path" => req
            .uri
            .path_and_query()
            .map_or(req.uri.path(), |p| p.as_str())
            .as_bytes()
            .to_vec(),
        b":authority" => match req.uri.authority() {
            Some(a) => a.as_str().as_bytes().to_vec(),
            None => req.headers.get(http::header::HOST)?.as_bytes().to_vec(),
        },
        b":scheme" => req.uri.scheme_str().unwrap_or("http").as_bytes().to_vec(),
        _ => return None,
    })
}

fn map_get(host: &mut Host, map: MapType, key: &[u8]) -> Option<Vec<u8>> {
    match map {
        MapType::RequestHeaders => {
            let req = host.request.get()?;
            if key.starts_with(b":") {
                return request_pseudo(req, key);
            }
            Some(req.headers.get(header_name(key).ok()?)?.as_bytes().to_vec())
        }
        MapType::ResponseHeaders => {
            let resp = host.response.get()?;
            if key == b":status" {
                return Some(resp.status.as_str().as_bytes().to_vec());
            }
            Some(
                resp.headers
                    .get(header_name(key).ok()?)?
                    .as_bytes()
                    .to_vec(),
            )
        }
        MapType::HttpCallResponseHeaders => host
            .call_answer
            .as_ref()?
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone()),
        MapType::Other => None,
    }
}

fn map_pairs(host: &mut Host, map: MapType) -> Option<Vec<u8>> {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = match map {
        MapType::RequestHeaders => {
            let req = host.request.get()?;
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = [":authority", ":path", ":method", ":scheme"]
                .iter()
                .filter_map(|k| Some((k.as_bytes().to_vec(), request_pseudo(req, k.as_bytes())?)))
                .collect();
            pairs.extend(
                req.headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
            );
            pairs
        }
        MapType::ResponseHeaders => {
            let resp = host.response.get()?;
            let mut pairs = vec![(
                b":status".to_vec(),
                resp.status.as_str().as_bytes().to_vec(),
            )];
            pairs.extend(
                resp.headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
            );
            pairs
        }
        MapType::HttpCallResponseHeaders => host.call_answer.as_ref()?.headers.clone(),
        MapType::Other => Vec::new(),
    };
    Some(abi::encode_pairs(
        pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    ))
}

#[derive(Clone, Copy)]
enum Edit {
    Replace,
    Add,
    Remove,
}

fn map_edit(
    host: &mut Host,
    map: MapType,
    edit: Edit,
    key: &[u8],
    value: &[u8],
) -> Result<(), Status> {
    match map {
        MapType::RequestHeaders => match host.request.get() {
            Some(req) => edit_request(req, edit, key, value),
            None => Err(Status::NotFound),
        },
        MapType::ResponseHeaders => match host.response.get() {
            Some(resp) => edit_response(resp, edit, key, value),
            None => Err(Status::NotFound),
        },
        MapType::HttpCallResponseHeaders | MapType::Other => Err(Status::BadArgument),
    }
}

fn edit_request(
    req: &mut RequestHeader,
    edit: Edit,
    key: &[u8],
    value: &[u8],
) -> Result<(), Status> {
    match (key, edit) {
        (b":path", Edit::Replace | Edit::Add) => {
            let uri = Uri::try_from(value).map_err(|_| Status::BadArgument)?;
            req.set_uri(uri);
            Ok(())
        }
        (b":method", Edit::Replace | Edit::Add) => {
            req.set_method(Method::from_bytes(value).map_err(|_| Status::BadArgument)?);
            Ok(())
        }
        (b":authority", Edit::Replace | Edit::Add) => req
            .insert_header(http::header::HOST, header_value(value)?)
            .map_err(|_| Status::BadArgument),
        (k, _) if k.starts_with(b":") => Err(Status::BadArgument),
        _ => edit_regular(req, edit, key, value),
    }
}

fn edit_response(
    resp: &mut ResponseHeader,
    edit: Edit,
    key: &[u8],
    value: &[u8],
) -> Result<(), Status> {
    match (key, edit) {
        (b":status", Edit::Replace | Edit::Add) => {
            let code = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u16>().ok())
                .ok_or(Status::BadArgument)?;
            resp.set_status(code).map_err(|_| Status::BadArgument)
        }
        (k, _) if k.starts_with(b":") => Err(Status::BadArgument),
        _ => edit_regular(resp, edit, key, value),
    }
}

/// What both heads take alike: their ordinary headers.
trait Head {
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> bool;
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> bool;
    fn unset(&mut self, name: &HeaderName);
}

impl Head for RequestHeader {
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> bool {
        self.insert_header(name, value).is_ok()
    }
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> bool {
        self.append_header(name, value).is_ok()
    }
    fn unset(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

impl Head for ResponseHeader {
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> bool {
        self.insert_header(name, value).is_ok()
    }
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> bool {
        self.append_header(name, value).is_ok()
    }
    fn unset(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

/// Replaces, adds or removes an ordinary header of either head.
fn edit_regular(head: &mut impl Head, edit: Edit, key: &[u8], value: &[u8]) -> Result<(), Status> {
    let name = header_name(key)?;
    let done = match edit {
        Edit::Replace => head.set(name, header_value(value)?),
        Edit::Add => head.add(name, header_value(value)?),
        Edit::Remove => {
            head.unset(&name);
            true
        }
    };
    if done {
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

/// Replaces a whole header map, as `proxy_set_header_map_pairs` asks: every pair is
/// checked first, so a bad one changes nothing. Pseudo-headers set what they name
/// (`:path`, `:method`, `:authority`; `:status`); `:scheme` is left as it is.
fn replace_map(
    host: &mut Host,
    map: MapType,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), Status> {
    let mut pseudo = Vec::new();
    let mut regular = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        if k.starts_with(b":") {
            pseudo.push((k, v));
        } else {
            regular.push((header_name(&k)?, header_value(&v)?));
        }
    }
    match map {
        MapType::RequestHeaders => {
            let req = host.request.get().ok_or(Status::NotFound)?;
            for (k, v) in &pseudo {
                if k.as_slice() != b":scheme" {
                    edit_request(req, Edit::Replace, k, v)?;
                }
            }
            let names: Vec<HeaderName> = req.headers.keys().cloned().collect();
            for name in names {
                req.remove_header(&name);
            }
            for (k, v) in regular {
                req.append_header(k, v).map_err(|_| Status::BadArgument)?;
            }
        }
        MapType::ResponseHeaders => {
            let resp = host.response.get().ok_or(Status::NotFound)?;
            for (k, v) in &pseudo {
                edit_response(resp, Edit::Replace, k, v)?;
            }
            let names: Vec<HeaderName> = resp.headers.keys().cloned().collect();
            for name in names {
                resp.remove_header(&name);
            }
            for (k, v) in regular {
                resp.append_header(k, v).map_err(|_| Status::BadArgument)?;
            }
        }
        _ => return Err(Status::BadArgument),
    }
    Ok(())
}

// ---- buffers ----

fn buffer(host: &Host, kind: BufferType) -> Option<&[u8]> {
    match kind {
        BufferType::RequestBody | BufferType::ResponseBody => {
            (host.body_kind == Some(kind)).then_some(host.body.as_slice())
        }
        BufferType::HttpCallResponseBody => host.call_answer.as_ref().map(|a| a.body.as_slice()),
        BufferType::VmConfiguration => Some(&host.info.vm_config),
        BufferType::PluginConfiguration => Some(&host.info.config),
        BufferType::Other => None,
    }
}

// ---- properties ----

/// A property's value: strings as bytes, integers as 8 little-endian bytes (as Envoy does).
fn property(host: &Host, path: &[u8]) -> Option<Vec<u8>> {
    let name = path
        .split(|b| *b == 0)
        .map(|s| std::str::from_utf8(s).unwrap_or("\u{fffd}"))
        .collect::<Vec<_>>()
        .join(".");
    let text = |s: &str| Some(s.as_bytes().to_vec());
    match name.as_str() {
        "plugin_name" => return text(&host.info.name),
        "plugin_root_id" => return text(""),
        "plugin_vm_id" => return text(&host.info.name),
        _ => {}
    }
    let facts = host.facts.as_deref()?;
    match name.as_str() {
        "request.path" => text(&facts.path),
        "request.url_path" => text(facts.path.split('?').next().unwrap_or("")),
        "request.query" => text(facts.path.split_once('?').map_or("", |(_, q)| q)),
        "request.host" => text(&facts.host),
        "request.method" => text(facts.method.as_str()),
        "request.scheme" => text(facts.scheme),
        "request.protocol" => text(facts.protocol),
        "request.id" => text(&facts.request_id),
        "source.address" => text(&facts.client_ip.to_string()),
        "route_name" | "xds.route_name" => text(&facts.route_id),
        "response.code" => facts.status.map(|s| (s as i64).to_le_bytes().to_vec()),
        _ => None,
    }
}

/// Links every host function the ABI names (and the few WASI calls an SDK's runtime makes)
/// into `linker`. Imports a module needs and this host lacks trap when called.
pub fn link(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| -> Answer {
            let msg = bytes_or_fault!(&mut c, ptr, len);
            let msg = String::from_utf8_lossy(&msg);
            let plugin = &*c.data().info.name;
            match abi::log_level(level) {
                tracing::Level::TRACE => tracing::trace!(plugin, "{msg}"),
                tracing::Level::DEBUG => tracing::debug!(plugin, "{msg}"),
                tracing::Level::INFO => tracing::info!(plugin, "{msg}"),
                tracing::Level::WARN => tracing::warn!(plugin, "{msg}"),
                _ => tracing::error!(plugin, "{msg}"),
            }
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Ctx<'_>, ret: i32| -> Answer {
            let level = if tracing::enabled!(tracing::Level::TRACE) {
                0
            } else if tracing::enabled!(tracing::Level::DEBUG) {
                1
            } else {
                2
            };
            done(write_u32(&mut c, ret, level))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ret: i32| -> Answer {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            done(write(&mut c, ret, &nanos.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, ms: i32| -> Answer {
            c.data_mut().tick_period = Duration::from_millis(ms as u32 as u64);
            status(Status::Ok)
        },
    )?;

    // Header maps.
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>, map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32| -> Answer {
            let Some(map) = MapType::of(map) else {
                return status(Status::BadArgument);
            };
            let key = bytes_or_fault!(&mut c, kp, kl);
            match map_get(c.data_mut(), map, &key) {
                Some(value) => give(&mut c, &value, ret_ptr, ret_len),
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ret_ptr: i32, ret_len: i32| -> Answer {
            let Some(map) = MapType::of(map) else {
                return status(Status::BadArgument);
            };
            match map_pairs(c.data_mut(), map) {
                Some(bytes) => give(&mut c, &bytes, ret_ptr, ret_len),
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: Ctx<'_>, map: i32, ret: i32| -> Answer {
            let Some(map) = MapType::of(map) else {
                return status(Status::BadArgument);
            };
            match map_pairs(c.data_mut(), map) {
                Some(bytes) => done(write_u32(&mut c, ret, bytes.len() as u32)),
                None => status(Status::NotFound),
            }
        },
    )?;
    for (name, edit) in [
        ("proxy_replace_header_map_value", Edit::Replace),
        ("proxy_add_header_map_value", Edit::Add),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut c: Ctx<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> Answer {
                let Some(map) = MapType::of(map) else {
                    return status(Status::BadArgument);
                };
                let key = bytes_or_fault!(&mut c, kp, kl);
                let value = bytes_or_fault!(&mut c, vp, vl);
                done(map_edit(c.data_mut(), map, edit, &key, &value))
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, map: i32, kp: i32, kl: i32| -> Answer {
            let Some(map) = MapType::of(map) else {
                return status(Status::BadArgument);
            };
            let key = bytes_or_fault!(&mut c, kp, kl);
            done(map_edit(c.data_mut(), map, Edit::Remove, &key, &[]))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ptr: i32, len: i32| -> Answer {
            let Some(map) = MapType::of(map) else {
                return status(Status::BadArgument);
            };
            let bytes = bytes_or_fault!(&mut c, ptr, len);
            let Some(pairs) = abi::decode_pairs(&bytes) else {
                return status(Status::ParseFailure);
            };
            done(replace_map(c.data_mut(), map, pairs))
        },
    )?;

    // Buffers.
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32| -> Answer {
            let Some(kind) = BufferType::of(kind) else {
                return status(Status::BadArgument);
            };
            let Some(data) = buffer(c.data(), kind) else {
                return status(Status::NotFound);
            };
            let start = start as u32 as usize;
            if start > data.len() {
                return status(Status::BadArgument);
            }
            let end = start.saturating_add(max as u32 as usize).min(data.len());
            let slice = data[start..end].to_vec();
            give(&mut c, &slice, ret_ptr, ret_len)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: Ctx<'_>, kind: i32, ret_len: i32, ret_flags: i32| -> Answer {
            let Some(kind) = BufferType::of(kind) else {
                return status(Status::BadArgument);
            };
            let Some(len) = buffer(c.data(), kind).map(<[u8]>::len) else {
                return status(Status::NotFound);
            };
            let wrote = write_u32(&mut c, ret_len, len as u32)
                .and_then(|_| write_u32(&mut c, ret_flags, 0));
            done(wrote)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> Answer {
            let Some(kind) = BufferType::of(kind) else {
                return status(Status::BadArgument);
            };
            let data = bytes_or_fault!(&mut c, ptr, len);
            let host = c.data_mut();
            if !matches!(kind, BufferType::RequestBody | BufferType::ResponseBody)
                || host.body_kind != Some(kind)
            {
                return status(Status::NotFound);
            }
            let from = (start as u32 as usize).min(host.body.len());
            let to = from
                .saturating_add(size as u32 as usize)
                .min(host.body.len());
            if host.body.len() - (to - from) + data.len() > host.limits_bytes() {
                return status(Status::BadArgument);
            }
            host.body.splice(from..to, data);
            status(Status::Ok)
        },
    )?;

    // Properties.
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>, pp: i32, pl: i32, ret_ptr: i32, ret_len: i32| -> Answer {
            let path = bytes_or_fault!(&mut c, pp, pl);
            match property(c.data(), &path) {
                Some(value) => give(&mut c, &value, ret_ptr, ret_len),
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |_c: Ctx<'_>, _pp: i32, _pl: i32, _vp: i32, _vl: i32| -> Answer {
            status(Status::Unimplemented)
        },
    )?;

    // Shared data: one table per plugin, shared by its instances on every worker.
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32| -> Answer {
            let key = bytes_or_fault!(&mut c, kp, kl);
            let found = c.data().info.shared.get(&key);
            let Some((value, cas)) = found else {
                return status(Status::NotFound);
            };
            let given = give(&mut c, &value, ret_ptr, ret_len)?;
            if given != Status::Ok as i32 {
                return Ok(given);
            }
            done(write_u32(&mut c, ret_cas, cas))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> Answer {
            let key = bytes_or_fault!(&mut c, kp, kl);
            let value = bytes_or_fault!(&mut c, vp, vl);
            let done = c.data().info.shared.set(key, value, cas as u32);
            status(if done {
                Status::Ok
            } else {
                Status::CasMismatch
            })
        },
    )?;

    // Flow.
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Ctx<'_>, stream: i32| -> Answer {
            if stream == abi::STREAM_REQUEST || stream == abi::STREAM_RESPONSE {
                c.data_mut().effects.continued = true;
                status(Status::Ok)
            } else {
                status(Status::BadArgument)
            }
        },
    )?;
    // ABI 0.2.0's names for the same.
    for name in ["proxy_continue_request", "proxy_continue_response"] {
        linker.func_wrap("env", name, |mut c: Ctx<'_>| -> Answer {
            c.data_mut().effects.continued = true;
            status(Status::Ok)
        })?;
    }
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>,
         code: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         _grpc: i32|
         -> Answer {
            let _details = bytes_or_fault!(&mut c, dp, dl);
            let body = bytes_or_fault!(&mut c, bp, bl);
            let raw = bytes_or_fault!(&mut c, hp, hl);
            let Ok(code) = StatusCode::from_u16(code as u32 as u16) else {
                return status(Status::BadArgument);
            };
            let Some(pairs) = abi::decode_pairs(&raw) else {
                return status(Status::ParseFailure);
            };
            let mut headers = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                match (header_name(&k), header_value(&v)) {
                    (Ok(k), Ok(v)) => headers.push((k, v)),
                    _ => return status(Status::BadArgument),
                }
            }
            c.data_mut().effects.local = Some(LocalAnswer {
                status: code,
                headers,
                body: Bytes::from(body),
            });
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Ctx<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         _tp: i32,
         _tl: i32,
         timeout_ms: i32,
         ret_token: i32|
         -> Answer {
            let upstream = bytes_or_fault!(&mut c, up, ul);
            let raw = bytes_or_fault!(&mut c, hp, hl);
            if bl as u32 as usize > callout::MAX_BODY_OUT {
                return status(Status::BadArgument);
            }
            let body = bytes_or_fault!(&mut c, bp, bl);
            let Ok(upstream) = String::from_utf8(upstream) else {
                return status(Status::BadArgument);
            };
            let Some(pairs) = abi::decode_pairs(&raw) else {
                return status(Status::ParseFailure);
            };
            let host = c.data();
            if host.effects.calls.len() >= callout::MAX_PENDING {
                return status(Status::InternalFailure);
            }
            if host
                .info
                .call_upstreams
                .as_ref()
                .is_some_and(|allowed| !allowed.contains(&upstream))
            {
                return status(Status::BadArgument);
            }
            let call = match Callout::from_pairs(upstream, pairs, body, timeout_ms) {
                Ok(call) => call,
                Err(s) => return status(s),
            };
            let host = c.data_mut();
            host.next_token = host.next_token.wrapping_add(1);
            let token = host.next_token;
            host.effects.calls.push(Callout { token, ..call });
            done(write_u32(&mut c, ret_token, token))
        },
    )?;
    linker.func_wrap("env", "proxy_done", |_c: Ctx<'_>| -> Answer {
        status(Status::Ok)
    })?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |_c: Ctx<'_>, _id: i32| -> Answer { status(Status::Ok) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |_c: Ctx<'_>, _code: i32, _msg: i32, _len: i32| -> Answer { status(Status::NotFound) },
    )?;
    wasi(linker)?;
    Ok(())
}

/// The WASI calls the proxy-wasm SDKs' language runtimes make at start-up and for
/// printing: no files, no environment, the real clock, random bytes, and standard output
/// and error sent to the log.
fn wasi(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    const M: &str = "wasi_snapshot_preview1";
    const BADF: i32 = 8;
    const FAULT: i32 = 21;
    linker.func_wrap(
        M,
        "fd_write",
        |mut c: Ctx<'_>, fd: i32, iovs: i32, n: i32, ret: i32| -> Answer {
            if fd != 1 && fd != 2 {
                return Ok(BADF);
            }
            // A log line, not a file: at most 64 KiB of it is kept, from at most 1,024
            // pieces; the rest counts as written.
            const KEEP: usize = 64 << 10;
            let mut text = Vec::new();
            let mut written: u32 = 0;
            for i in 0..n.clamp(0, 1024) {
                let Ok(iov) = read(&mut c, iovs.wrapping_add(8 * i), 8) else {
                    return Ok(FAULT);
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                written = written.saturating_add(len);
                let room = KEEP.saturating_sub(text.len()).min(len as usize);
                match read(&mut c, ptr, room as i32) {
                    Ok(part) => text.extend(part),
                    Err(_) => return Ok(FAULT),
                }
            }
            let plugin = &*c.data().info.name;
            tracing::info!(plugin, "{}", String::from_utf8_lossy(&text).trim_end());
            Ok(write_u32(&mut c, ret, written).map_or(FAULT, |_| 0))
        },
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(M, name, |mut c: Ctx<'_>, count: i32, size: i32| -> Answer {
            Ok(write_u32(&mut c, count, 0)
                .and_then(|_| write_u32(&mut c, size, 0))
                .map_or(FAULT, |_| 0))
        })?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(M, name, |_c: Ctx<'_>, _a: i32, _b: i32| -> Answer { Ok(0) })?;
    }
    linker.func_wrap(
        M,
        "clock_time_get",
        |mut c: Ctx<'_>, _id: i32, _precision: i64, ret: i32| -> Answer {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            Ok(write(&mut c, ret, &nanos.to_le_bytes()).map_or(FAULT, |_| 0))
        },
    )?;
    linker.func_wrap(
        M,
        "random_get",
        |mut c: Ctx<'_>, ptr: i32, len: i32| -> Answer {
            // Filled in place: the range must lie in the module's own memory.
            let Some(memory) = memory(&mut c) else {
                return Ok(FAULT);
            };
            let (from, len) = (ptr as u32 as usize, len as u32 as usize);
            let Some(bytes) = from
                .checked_add(len)
                .and_then(|to| memory.data_mut(&mut c).get_mut(from..to))
            else {
                return Ok(FAULT);
            };
            let mut seed = random_seed();
            for b in bytes.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            Ok(0)
        },
    )?;
    linker.func_wrap(
        M,
        "proc_exit",
        |_c: Ctx<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::format_err!("the module exited with code {code}"))
        },
    )?;
    for name in ["fd_close", "fd_fdstat_get", "fd_prestat_get"] {
        linker.func_wrap(M, name, |_c: Ctx<'_>, _fd: i32| -> Answer { Ok(BADF) })?;
    }
    Ok(())
}

/// A seed for `random_get`: the clock mixed with a per-call counter. Plugins use it for ids
/// and hash seeds, not for secrets.
fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (now ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)) | 1
}

impl Host {
    /// The most body a callback may build: what the instance's memory may hold.
    fn limits_bytes(&self) -> usize {
        self.info.max_memory
    }
}

impl Callout {
    fn from_pairs(
        upstream: String,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
        timeout_ms: i32,
    ) -> Result<Callout, Status> {
        let mut method = Method::GET;
        let mut path = "/".to_string();
        let mut authority = None;
        let mut headers = Vec::new();
        for (k, v) in pairs {
            match k.as_slice() {
                b":method" => method = Method::from_bytes(&v).map_err(|_| Status::BadArgument)?,
                b":path" => path = String::from_utf8(v).map_err(|_| Status::BadArgument)?,
                b":authority" => {
                    authority = Some(String::from_utf8(v).map_err(|_| Status::BadArgument)?)
                }
                k if k.starts_with(b":") => {}
                _ => headers.push((k, v)),
            }
        }
        if upstream.is_empty() || !path.starts_with('/') {
            return Err(Status::BadArgument);
        }
        Ok(Callout {
            token: 0,
            upstream,
            method,
            path,
            authority,
            headers,
            body,
            timeout: Duration::from_millis((timeout_ms as u32 as u64).clamp(1, 60_000)),
        })
    }
}
