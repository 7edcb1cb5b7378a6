//! Bearer secrets colloquy hands out (refresh tokens, share links, API keys): 256 random
//! bits from the operating system behind a readable prefix, stored only as their SHA-256.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new secret: `prefix` followed by 64 hex digits (32 bytes from the OS's generator).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The SHA-256 of `secret`, what is stored and looked up instead of it.
pub fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// [`sha256`] as 64 lower-case hex digits (how events carry it).
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(sha256(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hashed_stably() {
        let (a, b) = (new_secret("cs_"), new_secret("cs_"));
        assert!(a.starts_with("cs_") && a.len() == 3 + 64);
        assert_ne!(a, b);
        assert_eq!(sha256_hex("test"), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }
}
