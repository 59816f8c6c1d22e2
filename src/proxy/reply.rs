//! Answers the gateway writes itself: its JSON errors (SPEC §4) and direct responses.

use bytes::Bytes;
use gatehouse_plugins::{Exchange, PluginChain, Reply};
use http::{header, HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// The body of a gateway error: `{"error": CODE, "message": TEXT, "request_id": ID}`.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({ "error": code, "message": message, "request_id": request_id });
    Bytes::from(body.to_string())
}

/// Everything a gateway-made answer carries.
pub struct Answer<'a> {
    pub status: StatusCode,
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl Answer<'_> {
    pub fn error<'a>(reply: &'a Reply, request_id: &str) -> Answer<'a> {
        Answer {
            status: reply.status,
            headers: &reply.headers,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: error_body(reply.code, &reply.message, request_id),
        }
    }
}

/// Writes a complete answer: the request id, the exchange's extra headers, then the route's
/// response edits, so `response_headers` apply to gateway-made answers too.
pub async fn send(
    session: &mut Session,
    answer: Answer<'_>,
    ex: &Exchange,
    plugins: Option<&PluginChain>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len() + 4))?;
    if let Some(content_type) = answer.content_type {
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
    }
    for (name, value) in answer.headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(header::CONTENT_LENGTH, answer.body.len())?;
    if let Ok(id) = HeaderValue::from_str(&ex.request_id) {
        resp.insert_header(super::identity::REQUEST_ID, id)?;
    }
    for (name, value) in &ex.response_headers {
        resp.insert_header(name.clone(), value.clone())?;
    }
    if let Some(plugins) = plugins {
        plugins.response(&mut resp, ex);
    }
    let head_only = session.req_header().method == Method::HEAD || answer.body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(answer.body), true).await?;
    }
    Ok(())
}
