//! Access tokens: JWT, HS256, one key per `kid` (looked up in memory, never fetched).

use std::collections::HashMap;

use chrono::Utc;
use colloquy_infra::settings::AuthSettings;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::errors::ApiError;

/// The claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Token id.
    pub jti: String,
    /// `access` (refresh tokens, when they come, say `refresh`).
    pub typ: String,
}

/// Issues and verifies access tokens.
pub struct Tokens {
    settings: AuthSettings,
    decoding: HashMap<String, DecodingKey>,
    encoding: EncodingKey,
    validation: Validation,
}

/// A configuration problem with the keys.
#[derive(Debug, thiserror::Error)]
#[error("auth configuration: {0}")]
pub struct TokenConfigError(String);

impl Tokens {
    /// Loads the keys; the signing key must be among them and every secret ≥ 32 bytes.
    pub fn new(settings: &AuthSettings) -> Result<Self, TokenConfigError> {
        if let Some(k) = settings.keys.iter().find(|k| k.secret.len() < 32) {
            return Err(TokenConfigError(format!("key {} is shorter than 32 bytes", k.kid)));
        }
        let signing = settings
            .keys
            .iter()
            .find(|k| k.kid == settings.signing_kid)
            .ok_or_else(|| TokenConfigError(format!("no key with kid {}", settings.signing_kid)))?;
        if signing.secret == colloquy_infra::settings::DEV_JWT_SECRET {
            tracing::warn!("Signing access tokens with the development key; set COLLOQUY_AUTH__KEYS in production.");
        }
        let decoding =
            settings.keys.iter().map(|k| (k.kid.clone(), DecodingKey::from_secret(k.secret.as_bytes()))).collect();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        Ok(Self {
            settings: settings.clone(),
            decoding,
            encoding: EncodingKey::from_secret(signing.secret.as_bytes()),
            validation,
        })
    }

    /// A signed access token for `user` and its lifetime in seconds.
    pub fn issue(&self, user: Uuid) -> Result<(String, u64), ApiError> {
        let now = Utc::now().timestamp();
        let ttl = self.settings.access_token_ttl_secs;
        let claims = Claims {
            sub: user.to_string(),
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            exp: now + ttl as i64,
            iat: now,
            jti: Uuid::new_v4().to_string(),
            typ: "access".into(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.settings.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(ApiError::internal)?;
        Ok((token, ttl))
    }

    /// The user a valid access token names.
    pub fn verify(&self, token: &str) -> Result<Uuid, ApiError> {
        let invalid = || ApiError::unauthorized("the access token is missing, invalid or expired");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let key = header.kid.as_deref().and_then(|kid| self.decoding.get(kid)).ok_or_else(invalid)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|_| invalid())?;
        if data.claims.typ != "access" {
            return Err(invalid());
        }
        data.claims.sub.parse().map_err(|_| invalid())
    }
}
