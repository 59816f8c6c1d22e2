//! RFC 7662 token introspection, for opaque tokens and JWTs signed by keys gatehouse does
//! not hold.
//!
//! Answers are cached ([`VerdictCache`]): an active token until `min(cache_ttl, exp)`, an
//! inactive one for [`NEGATIVE_TTL`] (capped by `cache_ttl`). Requests that present the same
//! uncached token at the same time share one call: the call runs as its own task, so a
//! client that goes away does not cancel it for the others.

use super::cache::{unix_now, Outcome, VerdictCache};
use super::identity::{ClaimRules, Identity};
use super::Failure;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, Client, ClientId, ClientSecret, EndpointNotSet, EndpointSet, IntrospectionUrl,
    StandardRevocableToken, StandardTokenIntrospectionResponse, TokenIntrospectionResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an inactive token's verdict is kept.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// `introspection` of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct IntrospectionSettings {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    pub cache_ttl: Duration,
    pub timeout: Duration,
}

/// Claims beyond RFC 7662's, kept so `forward.headers` can name any of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
struct OtherClaims(Map<String, Value>);

impl oauth2::ExtraTokenFields for OtherClaims {}

type Answer = StandardTokenIntrospectionResponse<OtherClaims, BasicTokenType>;

type IntrospectionClient = Client<
    BasicErrorResponse,
    BasicTokenResponse,
    Answer,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
>;

type Call = Shared<BoxFuture<'static, Outcome>>;

pub struct Introspector {
    client: IntrospectionClient,
    http: reqwest::Client,
    cache_ttl: u64,
    timeout: Duration,
    rules: Arc<ClaimRules>,
    verdicts: Arc<VerdictCache>,
    calls: Mutex<HashMap<Box<str>, Call>>,
}

impl Introspector {
    pub fn new(
        settings: &IntrospectionSettings,
        http: reqwest::Client,
        rules: Arc<ClaimRules>,
        verdicts: Arc<VerdictCache>,
    ) -> Result<Introspector, String> {
        let url = IntrospectionUrl::new(settings.endpoint.clone())
            .map_err(|e| format!("introspection.endpoint: {e}"))?;
        // client_secret_basic is the client's default authentication.
        let client = Client::new(ClientId::new(settings.client_id.clone()))
            .set_client_secret(ClientSecret::new(settings.client_secret.clone()))
            .set_introspection_url(url);
        Ok(Introspector {
            client,
            http,
            cache_ttl: settings.cache_ttl.as_secs(),
            timeout: settings.timeout,
            rules,
            verdicts,
            calls: Mutex::new(HashMap::new()),
        })
    }

    /// What the identity provider says about `token`, from the cache or one shared call.
    pub async fn check(self: &Arc<Self>, token: &str) -> Outcome {
        let call = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            // Checked under the lock: a call that just finished has cached its answer.
            if let Some(outcome) = self.verdicts.get(token, unix_now()) {
                return outcome;
            }
            match calls.get(token) {
                Some(call) => call.clone(),
                None => {
                    let this = self.clone();
                    let owned: Box<str> = token.into();
                    let key = owned.clone();
                    let task = tokio::spawn(async move {
                        let outcome = this.call(&owned).await;
                        this.calls
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&owned);
                        outcome
                    });
                    let call = async move { task.await.unwrap_or(Err(Failure::Unavailable)) }
                        .boxed()
                        .shared();
                    calls.insert(key, call.clone());
                    call
                }
            }
        };
        call.await
    }

    /// One introspection request; caches what it learns (but not an unreachable endpoint).
    async fn call(&self, token: &str) -> Outcome {
        let access_token = AccessToken::new(token.to_string());
        let request = self
            .client
            .introspect(&access_token)
            .request_async(&self.http);
        let answer = match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                tracing::warn!(%error, "token introspection failed");
                return Err(Failure::Unavailable);
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "token introspection timed out");
                return Err(Failure::Unavailable);
            }
        };
        let now = unix_now();
        let exp = answer.exp().map(|t| t.timestamp().max(0) as u64);
        let expired = exp.is_some_and(|exp| exp <= now);
        if !answer.active() || expired {
            let reason = if expired { "expired" } else { "inactive_token" };
            let until = now + self.cache_ttl.min(NEGATIVE_TTL.as_secs());
            let outcome = Err(Failure::InvalidToken(reason));
            self.verdicts.put(token, outcome.clone(), until);
            return outcome;
        }
        let claims = match serde_json::to_value(&answer) {
            Ok(Value::Object(claims)) => claims,
            _ => Map::new(),
        };
        let identity = Arc::new(Identity::from_claims(&claims, &self.rules));
        let until = exp.map_or(now + self.cache_ttl, |exp| exp.min(now + self.cache_ttl));
        self.verdicts.put(token, Ok(identity.clone()), until);
        Ok(identity)
    }
}
