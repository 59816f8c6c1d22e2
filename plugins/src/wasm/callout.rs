//! The HTTP calls plugins make (`proxy_http_call`), and their bounds.

use super::host::{CallAnswer, Callout};
use std::sync::LazyLock;

/// The most calls one callback may dispatch.
pub const MAX_PENDING: usize = 8;
/// The most calls one request may wait on, one after the other.
pub const MAX_PER_REQUEST: usize = 16;
/// The largest body a call may send.
pub const MAX_BODY_OUT: usize = 1 << 20;
/// The most of a call's answer a plugin is shown.
pub const MAX_BODY_IN: usize = 1 << 20;

static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client for plugin calls")
});

/// Makes one call; a failure is an answer with no headers, as Envoy gives.
pub async fn make(call: Callout) -> CallAnswer {
    let url = format!("http://{}{}", call.upstream, call.path);
    let mut request = CLIENT
        .request(call.method.clone(), &url)
        .timeout(call.timeout);
    for (k, v) in &call.headers {
        request = request.header(k.as_slice(), v.as_slice());
    }
    if let Some(authority) = &call.authority {
        request = request.header(http::header::HOST, authority.as_str());
    }
    if !call.body.is_empty() {
        request = request.body(call.body);
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
            let room = MAX_BODY_IN.saturating_sub(body.len());
            body.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        Some(CallAnswer { headers, body })
    };
    match tokio::time::timeout(call.timeout, answer).await {
        Ok(Some(answer)) => answer,
        _ => CallAnswer::default(),
    }
}
