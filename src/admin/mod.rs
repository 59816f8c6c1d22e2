//! The admin listener: health, readiness, the configuration in force, and (etcd mode) writes.

use crate::proxy::{error_body, new_request_id};
use crate::resource::{Kind, ObjectKey};
use crate::snapshot::Live;
use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Where resources are written, which decides what admin writes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    File,
    Etcd,
}

pub struct AdminApi {
    live: Arc<Live>,
    api_key: String,
    provider: ProviderKind,
}

impl AdminApi {
    pub fn new(live: Arc<Live>, api_key: String, provider: ProviderKind) -> AdminApi {
        AdminApi {
            live,
            api_key,
            provider,
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
            (&Method::GET, Some("status"), None) => {
                #[derive(Serialize)]
                struct Status<'a> {
                    revision: u64,
                    routes: usize,
                    upstreams: usize,
                    auth: usize,
                    rejected: &'a [crate::resource::Rejection],
                    loaded_at: String,
                }
                json(
                    StatusCode::OK,
                    &Status {
                        revision: snapshot.revision,
                        routes: snapshot.catalog.len(Kind::Route),
                        upstreams: snapshot.catalog.len(Kind::Upstream),
                        auth: snapshot.catalog.len(Kind::AuthPolicy),
                        rejected: &snapshot.rejected,
                        loaded_at: humantime::format_rfc3339_millis(snapshot.loaded_at).to_string(),
                    },
                )
            }
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
                            Some(resource) => json(StatusCode::OK, &resource),
                            None => error(
                                StatusCode::NOT_FOUND,
                                "not_found",
                                &format!("{key} is not in force"),
                            ),
                        }
                    }
                    (&Method::PUT | &Method::DELETE, Some(_)) => match self.provider {
                        ProviderKind::File => error(
                            StatusCode::CONFLICT,
                            "conflict",
                            "resources come from files in this deployment: edit the files instead",
                        ),
                        ProviderKind::Etcd => error(
                            StatusCode::NOT_IMPLEMENTED,
                            "not_implemented",
                            "admin writes to etcd are not available in this version",
                        ),
                    },
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
            "/readyz" => {
                if self.live.is_ready() {
                    json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
                } else {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({ "status": "loading" }),
                    )
                }
            }
            _ => match path.strip_prefix("/admin/") {
                Some(rest) => {
                    let authorization =
                        req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
                    match self.authorize(&method, authorization) {
                        Ok(()) => self.admin(&method, rest),
                        Err(denied) => *denied,
                    }
                }
                None => not_found(),
            },
        }
    }
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
