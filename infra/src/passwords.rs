//! Password hashing with argon2id (OWASP baseline: m = 19 MiB, t = 2, p = 1), off the async
//! workers and with bounded concurrency so a login storm cannot exhaust memory.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Shortest accepted password.
pub const PASSWORD_MIN: usize = 8;
/// Longest accepted password (hashing cost grows with length).
pub const PASSWORD_MAX: usize = 256;

/// Hashing failures (not "wrong password", which is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The hashing parameters are invalid (a bug).
    #[error("invalid password hashing parameters")]
    Params(#[source] argon2::Error),
    /// The library failed, or a stored hash is not a PHC string.
    #[error("password hashing failed")]
    Hash(#[source] argon2::password_hash::Error),
    /// The blocking task was cancelled or panicked.
    #[error("password hashing task failed")]
    Task,
}

/// Hashes and verifies passwords; clone freely (shares one semaphore).
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
}

fn argon2() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(PasswordError::Params)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

impl PasswordHasher {
    /// At most `concurrency` hashes run at once.
    pub fn new(concurrency: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(concurrency.max(1))) }
    }

    /// A PHC string (parameters inside, so they can be raised later).
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let _permit = self.permits.acquire().await.map_err(|_| PasswordError::Task)?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2()?.hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(PasswordError::Hash)
        })
        .await
        .map_err(|_| PasswordError::Task)?
    }

    /// Whether `password` matches `phc`. A malformed stored hash is an error, not a mismatch.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, PasswordError> {
        let _permit = self.permits.acquire().await.map_err(|_| PasswordError::Task)?;
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&phc).map_err(PasswordError::Hash)?;
            Ok(argon2()?.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|_| PasswordError::Task)?
    }

    /// Burns the same time as a real verification, so a login for an unknown address
    /// cannot be told from a wrong password by its latency.
    pub async fn verify_dummy(&self, password: String) {
        const DUMMY: &str =
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$7hbF1cmLJRsrWrqBNmOHE5HtOJIl2U8ZbCIbdjhVg6A";
        let _ = self.verify(password, DUMMY.to_string()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = PasswordHasher::new(2);
        let phc = hasher.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(hasher.verify("correct horse".into(), phc.clone()).await.unwrap());
        assert!(!hasher.verify("wrong horse".into(), phc).await.unwrap());
        assert!(hasher.verify("x".into(), "not a phc".into()).await.is_err());
    }
}
