//! The admin listener: health, readiness, the configuration in force, and (etcd mode) writes.

mod live;
mod ui;

use crate::etcd::EtcdSettings;
use crate::resource::{admit, parse_stored, Catalog, Kind, ObjectKey, Origin};
use crate::snapshot::Live;
use crate::snapshot::SourceReport;
use crate::store::{key_of, Conditional, Precondition, Store};
use crate::wire::{error_body, new_request_id};
use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Where resources are written, which decides what admin writes do.
pub enum Writes {
    /// Resources come from files: writes are refused (409).
    File,
    /// Writes go to etcd, through a connection opened on first use.
    Etcd(Box<EtcdWrites>),
}

pub struct EtcdWrites {
    settings: EtcdSettings,
    store: tokio::sync::Mutex<Option<Store>>,
}

impl Writes {
    pub fn etcd(settings: EtcdSettings) -> Writes {
        Writes::Etcd(Box::new(EtcdWrites {
            settings,
            store: tokio::sync::Mutex::new(None),
        }))
    }
}

/// What, besides the first snapshot, readiness waits on; the server knows its listeners and
/// its drain, the admin API only asks.
pub trait Readiness: Send + Sync {
    /// Why the gateway should get no new traffic now, if it should not.
    fn blocker(&self) -> Option<&'static str>;
}

/// Ready as soon as a snapshot is in force (tools and tests that start no proxy).
pub struct SnapshotOnly;

impl Readiness for SnapshotOnly {
    fn blocker(&self) -> Option<&'static str> {
        None
    }
}

/// The largest resource body the admin API reads.
const MAX_BODY: usize = 1024 * 1024;

/// How long a write waits to see its change in force before answering.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

pub struct AdminApi {
    live: Arc<Live>,
    api_key: String,
    writes: Writes,
    readiness: Arc<dyn Readiness>,
}

impl AdminApi {
    pub fn new(
        live: Arc<Live>,
        api_key: String,
        writes: Writes,
        readiness: Arc<dyn Readiness>,
    ) -> AdminApi {
        AdminApi {
            live,
            api_key,
            writes,
            readiness,
        }
    }

    /// Reads are open when no key is configured (the listener is loopback by default);
    /// writes never are. With a key, everything under `/admin/` needs it.
    fn authorize(
        &self,
        method: &Method,
        authorization: Option<&[u8]>,
    ) -> Result<(), Box<Response<Vec<u8>>>> {
        if self.api_key.is_empty() {
            if method == Method::GET || method == Method::HEAD {
                return Ok(());
            }
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "admin writes are disabled: admin.api_key is empty",
            )));
        }
        let given = authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if bool::from(given.ct_eq(self.api_key.as_bytes())) {
            Ok(())
        } else {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin API key is required",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
            );
            Err(Box::new(resp))
        }
    }

    fn admin(&self, method: &Method, rest: &str) -> Response<Vec<u8>> {
        let snapshot = self.live.load();
        let mut parts = rest.split('/').filter(|s| !s.is_empty());
        let (collection, id, extra) = (parts.next(), parts.next(), parts.next());
        if extra.is_some() {
            return not_found();
        }
        match (method, collection, id) {
            (_, Some(collection), _) => {
                let Some(kind) = Kind::from_collection(collection) else {
                    return not_found();
                };
                match (method, id) {
                    (&Method::GET, None) => json(StatusCode::OK, &snapshot.catalog.list(kind)),
                    (&Method::GET, Some(id)) => {
                        let key = ObjectKey {
                            kind,
                            id: id.to_string(),
                        };
                        match snapshot.catalog.get(&key) {
                            Some(resource) => {
                                let mut resp = json(StatusCode::OK, &resource);
                                resp.headers_mut()
                                    .insert(header::ETAG, etag(snapshot.revision));
                                resp
                            }
                            None => error(
                                StatusCode::NOT_FOUND,
                                "not_found",
                                &format!("{key} is not in force"),
                            ),
                        }
                    }
                    (&Method::PUT | &Method::DELETE, Some(_)) => error(
                        StatusCode::CONFLICT,
                        "conflict",
                        "resources come from files in this deployment: edit the files instead",
                    ),
                    _ => error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "use GET, or PUT/DELETE on one object",
                    ),
                }
            }
            _ => not_found(),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        match path.as_str() {
            "/healthz" => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            "/metrics" => {
                let metrics = &crate::telemetry::metrics::METRICS;
                // Node health and concurrency limits are read when scraped: always
                // current, and no series is left behind for a node or upstream that is gone.
                metrics.node_healthy.reset();
                metrics.concurrency_limit.reset();
                let now = crate::upstream::now_ms();
                for (id, upstream) in &self.live.load().upstreams {
                    if let Some(limit) = &upstream.concurrency {
                        metrics
                            .concurrency_limit
                            .with_label_values(&[id.as_str()])
                            .set(i64::from(limit.limit()));
                    }
                    for node in upstream.members().nodes.iter() {
                        metrics
                            .node_healthy
                            .with_label_values(&[id.as_str(), &node.addr.to_string()])
                            .set(i64::from(node.health.is_up(now)));
                    }
                }
                let body = metrics.render();
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .header(header::CONTENT_LENGTH, body.len())
                    .body(body)
                    .expect("static parts are valid")
            }
            "/readyz" => {
                let blocker = match self.live.is_ready() {
                    true => self.readiness.blocker(),
                    false => Some("loading"),
                };
                match blocker {
                    None => json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
                    Some(status) => json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({ "status": status }),
                    ),
                }
            }
            _ if path == "/ui" || path.starts_with("/ui/") => {
                if method != Method::GET && method != Method::HEAD {
                    let mut resp = error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "the dashboard's files are read with GET",
                    );
                    resp.headers_mut()
                        .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
                    return resp;
                }
                ui::serve(&path).unwrap_or_else(not_found)
            }
            _ => match path.strip_prefix("/admin/") {
                Some(rest) => {
                    let authorization =
                        req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
                    if let Err(denied) = self.authorize(&method, authorization) {
                        return *denied;
                    }
                    if rest == "resync" {
                        return self.resync(&method).await;
                    }
                    if rest == "status" && method == Method::GET {
                        return self.status().await;
                    }
                    if rest == "live" && method == Method::GET {
                        return json(StatusCode::OK, &live::upstreams(&self.live.load()));
                    }
                    if let (&Method::GET, Some(key)) = (&method, stored_target(rest)) {
                        return self.stored(key).await;
                    }
                    match (&method, &self.writes, write_target(rest)) {
                        (&Method::PUT | &Method::DELETE, Writes::Etcd(_), Some(key)) => {
                            let precondition = match precondition(&req.headers) {
                                Ok(precondition) => precondition,
                                Err(resp) => return *resp,
                            };
                            match (method == Method::PUT, precondition) {
                                (true, precondition) => self.put(session, key, precondition).await,
                                (false, Precondition::None) => self.delete(key, None).await,
                                (false, Precondition::UnchangedSince(since)) => {
                                    self.delete(key, Some(since)).await
                                }
                                (false, Precondition::Absent) => error(
                                    StatusCode::BAD_REQUEST,
                                    "invalid_header",
                                    "If-None-Match: a delete takes If-Match only",
                                ),
                            }
                        }
                        _ => self.admin(&method, rest),
                    }
                }
                None => not_found(),
            },
        }
    }
}

/// `{kind}/{id}` of a write.
fn write_target(rest: &str) -> Option<ObjectKey> {
    let mut parts = rest.split('/');
    let (collection, id, extra) = (parts.next()?, parts.next()?, parts.next());
    if extra.is_some() || id.is_empty() {
        return None;
    }
    Some(ObjectKey {
        kind: Kind::from_collection(collection)?,
        id: id.to_string(),
    })
}

/// `{kind}/{id}/stored`: the text etcd holds for an object.
fn stored_target(rest: &str) -> Option<ObjectKey> {
    write_target(rest.strip_suffix("/stored")?)
}

/// How long `/admin/status` waits for etcd's list of instances.
const FLEET_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

impl AdminApi {
    /// `/admin/status`: the snapshot in force, its source, and (with etcd) the fleet.
    async fn status(&self) -> Response<Vec<u8>> {
        #[derive(Serialize)]
        struct Status<'a> {
            revision: u64,
            routes: usize,
            upstreams: usize,
            auth: usize,
            global_rules: usize,
            rejected: &'a [crate::resource::Rejection],
            loaded_at: String,
            source: SourceReport,
            #[serde(skip_serializing_if = "Option::is_none")]
            fleet: Option<serde_json::Value>,
            /// The shared limit store's connection, when the bootstrap has one.
            #[serde(skip_serializing_if = "Option::is_none")]
            redis: Option<crate::fleet::limits::StoreStatus>,
        }
        let fleet = match &self.writes {
            Writes::File => None,
            Writes::Etcd(etcd) => Some(self.fleet(&etcd.settings.prefix).await),
        };
        let snapshot = self.live.load();
        json(
            StatusCode::OK,
            &Status {
                revision: snapshot.revision,
                routes: snapshot.catalog.len(Kind::Route),
                upstreams: snapshot.catalog.len(Kind::Upstream),
                auth: snapshot.catalog.len(Kind::AuthPolicy),
                global_rules: snapshot.catalog.len(Kind::GlobalRule),
                rejected: &snapshot.rejected,
                loaded_at: humantime::format_rfc3339_millis(snapshot.loaded_at).to_string(),
                source: self.live.source().report(),
                fleet,
                redis: crate::fleet::limits::installed().map(|store| store.status()),
            },
        )
    }

    /// The instances registered in etcd, or why they cannot be listed now.
    async fn fleet(&self, prefix: &str) -> serde_json::Value {
        let listed = tokio::time::timeout(FLEET_WITHIN, async {
            let read = self
                .on_store(async |store| crate::fleet::read(&mut store.client, prefix).await)
                .await;
            match read {
                Ok(read) => read.map_err(|e| e.to_string()),
                Err(_) => Err("etcd cannot be reached".to_string()),
            }
        })
        .await;
        match listed {
            Ok(Ok(fleet)) => serde_json::to_value(fleet).unwrap_or_default(),
            Ok(Err(error)) => serde_json::json!({ "error": error }),
            Err(_) => serde_json::json!({ "error": "etcd did not answer in time" }),
        }
    }

    /// Validates with the same admission as every source, then writes to etcd if
    /// `precondition` holds there.
    async fn put(
        &self,
        session: &mut ServerSession,
        key: ObjectKey,
        precondition: Precondition,
    ) -> Response<Vec<u8>> {
        let Writes::Etcd(etcd) = &self.writes else {
            return not_found();
        };
        let body = match read_body(session).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        let origin = Origin::key(key_of(&etcd.settings.prefix, &key).into());
        let doc = parse_stored(origin.clone(), key.clone(), &body);
        if let Err(errors) = &doc.parsed {
            return invalid(errors.iter().map(|e| e.to_string()).collect());
        }
        // Judge it together with everything in force, as the provider will.
        let snapshot = self.live.load();
        let mut docs: Vec<_> = snapshot
            .catalog
            .documents()
            .into_iter()
            .filter(|d| d.key.as_ref() != Some(&key))
            .collect();
        docs.push(doc);
        let (_, rejections) = admit(&docs, &Catalog::default());
        let errors: Vec<String> = rejections
            .iter()
            .filter(|r| r.origin == origin)
            .flat_map(|r| r.errors.iter().map(|e| e.to_string()))
            .collect();
        if !errors.is_empty() {
            return invalid(errors);
        }
        let result = self
            .on_store(async |store| store.put(&key, body, precondition).await)
            .await;
        let result = match result {
            Ok(result) => result,
            Err(resp) => return resp,
        };
        match result {
            Ok(Conditional::Done(revision)) => self.written(&key, revision).await,
            Ok(refused) => not_unchanged(&key, refused),
            Err(e) => unconfirmed(e),
        }
    }

    async fn delete(&self, key: ObjectKey, since: Option<i64>) -> Response<Vec<u8>> {
        let users = self.live.load().catalog.users_of(&key);
        if !users.is_empty() {
            return error(
                StatusCode::CONFLICT,
                "conflict",
                &format!("{key} is still used by route {}", users.join(", ")),
            );
        }
        let result = match self
            .on_store(async |store| store.delete(&key, since).await)
            .await
        {
            Ok(result) => result,
            Err(resp) => return resp,
        };
        match result {
            Ok(Conditional::Done(revision)) => self.written(&key, revision).await,
            Ok(Conditional::Absent) if since.is_none() => error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("{key} is not in etcd"),
            ),
            Ok(refused) => not_unchanged(&key, refused),
            Err(e) => unconfirmed(e),
        }
    }

    /// `GET /admin/{kind}/{id}/stored`: the text etcd holds for the object, as it was
    /// written (comments and all), with its own revision as the `ETag`. It may be a version
    /// that was rejected: this is how the editor loads one to fix it. Not for auth
    /// policies, whose text holds their secrets.
    async fn stored(&self, key: ObjectKey) -> Response<Vec<u8>> {
        if !matches!(self.writes, Writes::Etcd(_)) {
            return error(
                StatusCode::CONFLICT,
                "conflict",
                "resources come from files in this deployment: read the files instead",
            );
        }
        if key.kind == Kind::AuthPolicy {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the stored text of an auth policy holds its secrets: it is not served",
            );
        }
        let result = match self.on_store(async |store| store.stored(&key).await).await {
            Ok(result) => result,
            Err(resp) => return resp,
        };
        match result {
            Ok(Some((value, revision))) => {
                let mut resp = Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/yaml; charset=utf-8")
                    .header(header::CONTENT_LENGTH, value.len())
                    .body(value)
                    .expect("static parts are valid");
                resp.headers_mut()
                    .insert(header::ETAG, etag(revision.max(0) as u64));
                resp
            }
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("{key} is not in etcd"),
            ),
            Err(e) => unavailable(e),
        }
    }

    /// Runs `op` on the etcd connection (opened on first use; admin calls are rare and take
    /// turns). A call that fails drops the connection, so the next one opens a new one
    /// rather than reuse a broken one. `Err` is the answer when etcd cannot be reached.
    async fn on_store<T, E>(
        &self,
        op: impl AsyncFnOnce(&mut Store) -> Result<T, E>,
    ) -> Result<Result<T, E>, Response<Vec<u8>>> {
        let mut guard = self.connected().await?;
        let result = op(guard.as_mut().expect("connected")).await;
        if result.is_err() {
            *guard = None;
        }
        Ok(result)
    }

    /// The etcd connection, opened on first use.
    async fn connected(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Store>>, Response<Vec<u8>>> {
        let Writes::Etcd(etcd) = &self.writes else {
            return Err(not_found());
        };
        let mut guard = etcd.store.lock().await;
        if guard.is_none() {
            *guard = Some(Store::open(&etcd.settings).await.map_err(unavailable)?);
        }
        Ok(guard)
    }

    /// Asks the provider to read its source again and accept what it holds, even an etcd it
    /// stopped trusting; answers once that is in force (or after a bounded wait, with 202).
    async fn resync(&self, method: &Method) -> Response<Vec<u8>> {
        if method != Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST /admin/resync",
            );
        }
        let source = self.live.source();
        let ticket = source.request_resync();
        let done = source.wait_resynced(ticket, SETTLE).await;
        let status = if done {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        json(
            status,
            &serde_json::json!({
                "resynced": done,
                "revision": self.live.load().revision,
                "source": source.report(),
            }),
        )
    }

    /// Answers a write once its revision is in force (or after a bounded wait).
    async fn written(&self, key: &ObjectKey, revision: i64) -> Response<Vec<u8>> {
        let in_force = self.live.in_force(revision as u64, SETTLE).await;
        json(
            StatusCode::OK,
            &serde_json::json!({ "key": key.to_string(), "revision": revision, "in_force": in_force }),
        )
    }
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "bad_request",
                        "the body is over 1 MiB",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &e.to_string(),
                ))
            }
        }
    }
}

fn unavailable(e: crate::store::StoreError) -> Response<Vec<u8>> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "etcd_unavailable",
        &e.to_string(),
    )
}

/// 503 for a write etcd did not confirm: it may still land (a request already sent to a
/// stalled etcd is applied when it resumes), so the caller is told to read before retrying.
fn unconfirmed(e: crate::store::StoreError) -> Response<Vec<u8>> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "etcd_unavailable",
        &format!(
            "{e}; the write may still be applied when etcd answers: read the object back \
             before writing it again"
        ),
    )
}

/// The `ETag` of an object read from the snapshot of `revision`: a later write that sends
/// it back as `If-Match` applies only if the object has not changed in etcd since.
fn etag(revision: u64) -> http::HeaderValue {
    http::HeaderValue::try_from(format!("\"{revision}\"")).expect("digits in quotes")
}

/// What a write's conditional headers ask: `If-Match` (see [`if_match`]), or
/// `If-None-Match: *` (create only: the object must not be in etcd). Both at once, or
/// another `If-None-Match`, is 400.
fn precondition(headers: &http::HeaderMap) -> Result<Precondition, Box<Response<Vec<u8>>>> {
    let since = if_match(headers)?;
    let Some(value) = headers.get(header::IF_NONE_MATCH) else {
        return Ok(since.map_or(Precondition::None, Precondition::UnchangedSince));
    };
    if since.is_some() || value.to_str().map(str::trim).ok() != Some("*") {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "If-None-Match: only * (create it only if it is not in etcd), and not with If-Match",
        )));
    }
    Ok(Precondition::Absent)
}

/// The revision of `If-Match`, if the request has one: an `ETag` this API gave (`"N"`,
/// weak or not, or `N`), or `*` (the object only has to be in etcd).
fn if_match(headers: &http::HeaderMap) -> Result<Option<i64>, Box<Response<Vec<u8>>>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(Some(i64::MAX));
    }
    let tag = text.strip_prefix("W/").unwrap_or(text);
    let bare = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    match bare.parse::<i64>() {
        Ok(revision) if revision >= 0 => Ok(Some(revision)),
        _ => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "If-Match: expected the ETag of a read of this object (a revision such as \"42\") or *",
        ))),
    }
}

/// 412: the object changed after the revision the writer read it at, or is not in etcd.
fn not_unchanged(key: &ObjectKey, refused: Conditional) -> Response<Vec<u8>> {
    match refused {
        Conditional::Present => error(
            StatusCode::PRECONDITION_FAILED,
            "already_exists",
            &format!(
                "{key} is in etcd already: nothing was written; load it and edit it, or \
                 write without If-None-Match to replace it"
            ),
        ),
        Conditional::Absent => error(
            StatusCode::PRECONDITION_FAILED,
            "not_in_etcd",
            &format!(
                "{key} is not in etcd (deleted since it was read, or kept in force only \
                 because a route uses it): nothing was written; write it without If-Match \
                 to store it"
            ),
        ),
        _ => error(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            &format!(
                "{key} changed in etcd after it was read: nothing was written; read it again \
                 and reapply the edit"
            ),
        ),
    }
}

/// 400 with every reason.
fn invalid(errors: Vec<String>) -> Response<Vec<u8>> {
    let body = serde_json::json!({
        "error": "invalid_resource",
        "message": errors.join("; "),
        "errors": errors,
        "request_id": new_request_id(),
    });
    json(StatusCode::BAD_REQUEST, &body)
}

fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static parts are valid")
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    let body = error_body(code, message, &new_request_id()).to_vec();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static parts are valid")
}

fn not_found() -> Response<Vec<u8>> {
    error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
}
