//! Access tokens: JWT, HS256, one key per `kid` (looked up in memory, never fetched).
//!
//! An access token is short-lived and names its login session (`sid`); `typ` is `access`.
//! Refresh tokens are not JWTs at all but opaque secrets (`crt_…`, see
//! `colloquy_commands::sessions`), so neither can pass for the other. A valid signature is
//! not enough: [`crate::auth`] also asks the session tables whether the token may still be
//! used (account active, session and token not revoked).

use std::collections::HashMap;

use chrono::Utc;
use colloquy_infra::settings::{AuthSettings, KeyError};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::errors::ApiError;

/// `typ` of access tokens.
pub const ACCESS: &str = "access";

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
    /// Token id (revoked one by one at logout).
    pub jti: String,
    /// The login session (refresh-token family) the token belongs to.
    pub sid: String,
    /// Always `access`.
    pub typ: String,
}

/// A verified access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessToken {
    /// Whose.
    pub user: Uuid,
    /// Its session.
    pub session: Uuid,
    /// Its id.
    pub jti: Uuid,
    /// When it expires (seconds since the epoch).
    pub expires_at: i64,
}

impl AccessToken {
    /// Seconds until it expires (at least 1).
    pub fn remaining_secs(&self) -> u64 {
        u64::try_from(self.expires_at - Utc::now().timestamp()).unwrap_or(0).max(1)
    }
}

/// Issues and verifies access tokens.
pub struct Tokens {
    settings: AuthSettings,
    decoding: HashMap<String, DecodingKey>,
    encoding: EncodingKey,
    validation: Validation,
}

/// A configuration problem with the keys (names the kid, never the secret).
#[derive(Debug, thiserror::Error)]
#[error("auth configuration: {0}")]
pub struct TokenConfigError(#[from] KeyError);

impl Tokens {
    /// Loads the keys after [`AuthSettings::check_keys`]: every key at least 32 bytes, none
    /// of the published development keys (unless the settings allow them: `colloquy dev`),
    /// and the signing key among them.
    pub fn new(settings: &AuthSettings) -> Result<Self, TokenConfigError> {
        settings.check_keys()?;
        let signing = settings
            .keys
            .iter()
            .find(|k| k.kid == settings.signing_kid)
            .ok_or_else(|| KeyError::NoSigningKey { kid: settings.signing_kid.clone() })?;
        if settings.allow_published_keys
            && colloquy_infra::settings::PUBLISHED_JWT_SECRETS.contains(&signing.secret.as_str())
        {
            tracing::warn!(kid = %signing.kid, "Signing access tokens with a published development key.");
        }
        let decoding =
            settings.keys.iter().map(|k| (k.kid.clone(), DecodingKey::from_secret(k.secret.as_bytes()))).collect();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Tokens are short-lived and issued by the same fleet that checks them.
        validation.leeway = 0;
        Ok(Self {
            settings: settings.clone(),
            decoding,
            encoding: EncodingKey::from_secret(signing.secret.as_bytes()),
            validation,
        })
    }

    /// A signed access token for `user` in `session`, and its lifetime in seconds.
    pub fn issue(&self, user: Uuid, session: Uuid) -> Result<(String, u64), ApiError> {
        let now = Utc::now().timestamp();
        let ttl = self.settings.access_token_ttl_secs.max(1);
        let claims = Claims {
            sub: user.to_string(),
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            exp: now + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
            iat: now,
            jti: Uuid::new_v4().to_string(),
            sid: session.to_string(),
            typ: ACCESS.into(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.settings.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(ApiError::internal)?;
        Ok((token, ttl))
    }

    /// The claims of a validly signed, unexpired access token (whether it may still be
    /// used is for the session tables to say).
    pub fn verify(&self, token: &str) -> Result<AccessToken, ApiError> {
        let invalid = || ApiError::unauthorized("the access token is missing, invalid or expired");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let key = header.kid.as_deref().and_then(|kid| self.decoding.get(kid)).ok_or_else(invalid)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|_| invalid())?;
        let claims = data.claims;
        if claims.typ != ACCESS {
            return Err(invalid());
        }
        Ok(AccessToken {
            user: claims.sub.parse().map_err(|_| invalid())?,
            session: claims.sid.parse().map_err(|_| invalid())?,
            jti: claims.jti.parse().map_err(|_| invalid())?,
            expires_at: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use colloquy_infra::settings::{JwtKey, DEV_JWT_SECRET};

    use super::*;

    fn settings(secret: &str) -> AuthSettings {
        AuthSettings {
            keys: vec![JwtKey { kid: "k1".into(), secret: secret.into() }],
            signing_kid: "k1".into(),
            ..AuthSettings::default()
        }
    }

    #[test]
    fn short_and_published_keys_are_refused() {
        let short = Tokens::new(&settings("0123456789abcdef0123456789abcde")).err().unwrap();
        assert!(short.to_string().contains("\"k1\"") && short.to_string().contains("shorter than 32"), "{short}");
        assert!(!short.to_string().contains("0123456789abcdef"), "{short}");
        let published = Tokens::new(&settings(DEV_JWT_SECRET)).err().unwrap();
        assert!(published.to_string().contains("published"), "{published}");
        let mut dev = settings(DEV_JWT_SECRET);
        dev.allow_published_keys = true;
        assert!(Tokens::new(&dev).is_ok());
        assert!(Tokens::new(&settings(&"s".repeat(32))).is_ok());
    }

    #[test]
    fn issued_tokens_verify_with_their_session() {
        let tokens = Tokens::new(&settings(&"s".repeat(40))).unwrap();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, ttl) = tokens.issue(user, session).unwrap();
        assert_eq!(ttl, AuthSettings::default().access_token_ttl_secs);
        let verified = tokens.verify(&token).unwrap();
        assert_eq!((verified.user, verified.session), (user, session));
        assert!(verified.remaining_secs() <= ttl);
        // Another key with the same kid: refused.
        let other = Tokens::new(&settings(&"t".repeat(40))).unwrap();
        assert!(other.verify(&token).is_err());
        // A refresh token is no access token.
        assert!(tokens.verify("crt_00112233").is_err());
    }
}
