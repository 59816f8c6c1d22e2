//! RFC 7662 token introspection, for opaque tokens and JWTs signed by keys gatehouse does
//! not hold.
//!
//! Answers are cached: an active token until `min(cache_ttl, exp)` ([`VerdictCache`]), a
//! refused one for `negative_ttl` ([`RefusalCache`], by digest). Requests that present the
//! same uncached token at the same time share one call: the call runs as its own task, so a
//! client that goes away does not cancel it for the others. At most `max_concurrency` calls
//! of one policy are in flight; a request that would start one more is refused at once (503)
//! rather than queued, so a flood of made-up tokens can neither pile up on the identity
//! provider nor hold the gateway's memory while it waits.

use super::cache::{unix_millis, Outcome, RefusalCache, TokenDigest, VerdictCache};
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
use tokio::sync::Semaphore;

/// How long a refused token's verdict is kept when the policy does not say
/// (`introspection.negative_ttl`).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Calls in flight per policy when the policy does not say (`introspection.max_concurrency`).
pub const MAX_CONCURRENCY: usize = 64;
/// How many refusals one policy remembers: a digest and a verdict each, a few dozen bytes.
pub const REFUSALS_REMEMBERED: usize = 100_000;

/// `introspection` of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct IntrospectionSettings {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    pub cache_ttl: Duration,
    pub timeout: Duration,
    /// How long a refused token is remembered; zero remembers none.
    pub negative_ttl: Duration,
    /// Calls in flight at most; past it a request is refused at once.
    pub max_concurrency: usize,
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
    /// Milliseconds.
    cache_ttl: u64,
    /// Milliseconds.
    negative_ttl: u64,
    timeout: Duration,
    rules: Arc<ClaimRules>,
    verdicts: Arc<VerdictCache>,
    refusals: RefusalCache,
    /// One permit per call in flight.
    slots: Arc<Semaphore>,
    /// Calls in flight, by token: only `max_concurrency` of them at a time.
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
        if settings.max_concurrency == 0 {
            return Err("introspection.max_concurrency: must be at least 1".into());
        }
        // client_secret_basic is the client's default authentication.
        let client = Client::new(ClientId::new(settings.client_id.clone()))
            .set_client_secret(ClientSecret::new(settings.client_secret.clone()))
            .set_introspection_url(url);
        Ok(Introspector {
            client,
            http,
            cache_ttl: millis(settings.cache_ttl),
            negative_ttl: millis(settings.negative_ttl),
            timeout: settings.timeout,
            rules,
            verdicts,
            refusals: RefusalCache::new(REFUSALS_REMEMBERED),
            slots: Arc::new(Semaphore::new(settings.max_concurrency)),
            calls: Mutex::new(HashMap::new()),
        })
    }

    /// Why `token` was refused, if that is remembered and still fresh at `now` (Unix
    /// milliseconds): the request is answered without a call.
    pub fn remembered_refusal(&self, token: &str, now: u64) -> Option<Failure> {
        self.refusals.get(self.refusals.digest(token), now)
    }

    /// What the identity provider says about `token`, from the caches or one shared call.
    pub async fn check(self: &Arc<Self>, token: &str) -> Outcome {
        // Worked out before the lock: a long token must not hold up the other requests.
        let digest = self.refusals.digest(token);
        let call = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            // Checked under the lock: a call that just finished has cached its answer.
            let now = unix_millis();
            if let Some(outcome) = self.verdicts.get(token, now) {
                return outcome;
            }
            if let Some(failure) = self.refusals.get(digest, now) {
                return Err(failure);
            }
            match calls.get(token) {
                Some(call) => call.clone(),
                None => {
                    let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                        return Err(Failure::Overloaded);
                    };
                    let this = self.clone();
                    let owned: Box<str> = token.into();
                    let key = owned.clone();
                    let task = tokio::spawn(async move {
                        let outcome = this.call(&owned, digest).await;
                        this.calls
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&owned);
                        drop(permit);
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
    async fn call(&self, token: &str, digest: TokenDigest) -> Outcome {
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
        let now = unix_millis();
        let exp = answer
            .exp()
            .map(|t| (t.timestamp().max(0) as u64).saturating_mul(1000));
        let expired = exp.is_some_and(|exp| exp <= now);
        if !answer.active() || expired {
            let reason = if expired { "expired" } else { "inactive_token" };
            let failure = Failure::InvalidToken(reason);
            if self.negative_ttl > 0 {
                self.refusals
                    .put(digest, failure, now.saturating_add(self.negative_ttl));
            }
            return Err(failure);
        }
        let claims = match serde_json::to_value(&answer) {
            Ok(Value::Object(claims)) => claims,
            _ => Map::new(),
        };
        let identity = Arc::new(Identity::from_claims(&claims, &self.rules));
        let fresh_until = now.saturating_add(self.cache_ttl);
        let until = exp.map_or(fresh_until, |exp| exp.min(fresh_until));
        self.verdicts.put(token, Ok(identity.clone()), until);
        Ok(identity)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
