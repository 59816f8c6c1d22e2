//! Verification keys: configured inline or published in a JWKS.
//!
//! Every key carries the one algorithm it may verify. A token's header only *names* the
//! algorithm; a key accepts the token when the two agree, so `alg: none`, an HS256 token
//! made with an RSA public key as its secret, and every other confusion fail before any
//! signature is computed.

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::str::FromStr;

/// Key material as an operator writes it in `jwt.keys[]`.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyMaterial {
    /// An HMAC secret: raw text, or `base64:` followed by base64 of the bytes.
    Secret(String),
    /// A public key (or certificate) in PEM.
    PublicKeyPem(String),
}

/// A key ready to verify signatures of one algorithm.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// Builds a configured key; the error says what is wrong with the material.
    pub fn configured(
        kid: Option<String>,
        alg: &str,
        material: &KeyMaterial,
    ) -> Result<VerifyKey, String> {
        let alg = Algorithm::from_str(alg).map_err(|_| format!("`{alg}` is not supported"))?;
        let family = alg.family();
        let key = match (family, material) {
            (AlgorithmFamily::Hmac, KeyMaterial::Secret(secret)) => {
                match secret.strip_prefix("base64:") {
                    Some(encoded) => DecodingKey::from_secret(
                        &decode_base64(encoded).ok_or("the part after `base64:` is not base64")?,
                    ),
                    None if secret.is_empty() => return Err("must not be empty".into()),
                    None => DecodingKey::from_secret(secret.as_bytes()),
                }
            }
            (AlgorithmFamily::Rsa, KeyMaterial::PublicKeyPem(pem)) => {
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| pem_error("an RSA", e))?
            }
            (AlgorithmFamily::Ec, KeyMaterial::PublicKeyPem(pem)) => {
                DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| pem_error("an EC", e))?
            }
            (AlgorithmFamily::Ed, KeyMaterial::PublicKeyPem(pem)) => {
                DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| pem_error("an Ed25519", e))?
            }
            (AlgorithmFamily::Hmac, _) => return Err(format!("{alg:?} needs a `secret`")),
            _ => return Err(format!("{alg:?} needs a `public_key` PEM")),
        };
        Ok(VerifyKey { kid, alg, key })
    }

    /// Builds a key from a JWK. Keys for encryption, keys of unknown types and symmetric
    /// keys (a JWKS is public) give `None`.
    pub fn from_jwk(jwk: &Jwk) -> Option<VerifyKey> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return None;
        }
        let alg = match jwk.common.key_algorithm {
            Some(alg) => key_algorithm(alg)?,
            // Without `alg`, the key type decides where it is unambiguous.
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => return None,
                },
                AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                    EllipticCurve::Ed25519 => Algorithm::EdDSA,
                    _ => return None,
                },
                _ => return None,
            },
        };
        if alg.family() == AlgorithmFamily::Hmac {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        if key.family() != alg.family() {
            return None;
        }
        Some(VerifyKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        })
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Algorithm::from_str(&format!("{alg:?}")).ok()
}

fn pem_error(kind: &str, e: jsonwebtoken::errors::Error) -> String {
    format!("is not {kind} public key PEM ({e})")
}

/// Standard or URL-safe base64, padded or not.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text))
        .ok()
}

/// The keys a policy trusts at one moment.
#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    pub keys: Vec<VerifyKey>,
}

/// What the key ring says about a token's header.
pub enum KeyMatch<'k> {
    /// Keys that may verify the token, in the order to try them.
    Found(Vec<&'k VerifyKey>),
    /// The token names a key that exists for another algorithm: refused, never retried
    /// with another key.
    AlgorithmMismatch,
    /// No key fits: the key may be newer than this ring.
    Unknown,
}

impl KeyRing {
    /// Parses a JWKS document, keeping the keys gatehouse can use.
    pub fn from_jwks(body: &[u8]) -> Result<KeyRing, String> {
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys = set
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| VerifyKey::from_jwk(&jwk))
            .collect();
        Ok(KeyRing { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys for a token with this `kid` and `alg`.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> KeyMatch<'_> {
        match kid {
            Some(kid) => {
                let named: Vec<&VerifyKey> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    KeyMatch::Unknown
                } else if named.iter().any(|k| k.alg == alg) {
                    KeyMatch::Found(named.into_iter().filter(|k| k.alg == alg).collect())
                } else {
                    KeyMatch::AlgorithmMismatch
                }
            }
            None => {
                let fitting: Vec<&VerifyKey> = self.keys.iter().filter(|k| k.alg == alg).collect();
                if fitting.is_empty() {
                    KeyMatch::Unknown
                } else {
                    KeyMatch::Found(fitting)
                }
            }
        }
    }
}
