//! Bearer-token authentication with three roles. Tokens are configured as SHA-256 hashes
//! (a token file never holds a usable secret) and compared in constant time. With no
//! tokens configured, authentication is off (the server then refuses non-loopback
//! addresses unless started with `--insecure`).
//!
//! Token file: one token per line, `<role> <sha256-hex> [name]`; `#` starts a comment.
//! `refold token new --role write` prints a fresh token and its line.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads, subscriptions, queries.
    Read,
    /// Read, and append.
    Write,
    /// Everything, including deploying, deleting and operator actions.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// What a route requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token needed (liveness, the API description).
    Public,
    Needs(Role),
}

struct Token {
    role: Role,
    hash: [u8; 32],
}

/// The configured tokens.
#[derive(Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

/// The SHA-256 of a token, as stored in a token file.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tokens {
    /// Reads a token file.
    ///
    /// # Errors
    /// The file cannot be read, or a line is malformed (named by its number).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(role), Some(hash)) = (fields.next(), fields.next()) else {
                bail!(
                    "{}:{}: expected `<role> <sha256-hex> [name]`",
                    path.display(),
                    n + 1
                );
            };
            let role = Role::parse(role).with_context(|| {
                format!(
                    "{}:{}: the role must be read, write or admin",
                    path.display(),
                    n + 1
                )
            })?;
            let hash: [u8; 32] = hex::decode(hash)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .with_context(|| {
                    format!(
                        "{}:{}: the hash must be 64 hex digits (SHA-256)",
                        path.display(),
                        n + 1
                    )
                })?;
            tokens.push(Token { role, hash });
        }
        if tokens.is_empty() {
            bail!("the token file {} holds no token", path.display());
        }
        Ok(Self { tokens })
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The role of `token`, comparing against every configured hash in constant time.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for candidate in &self.tokens {
            let difference = candidate
                .hash
                .iter()
                .zip(hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(candidate.role);
            }
        }
        found
    }
}

/// The middleware of one route: checks the bearer token against what the route needs.
pub async fn require(
    State((tokens, access)): State<(Arc<Tokens>, Access)>,
    request: Request,
    next: Next,
) -> Response {
    let Access::Needs(needed) = access else {
        return next.run(request).await;
    };
    if tokens.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(role) = presented.and_then(|token| tokens.role_of(token)) else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    if role < needed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role; the token has the {} role",
                needed.as_str(),
                role.as_str()
            ),
        )
        .with("required_role", needed.as_str())
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_by_hash_and_roles_are_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            format!(
                "# ops\nadmin {} ops\nread {}\n",
                hash_token("a-secret"),
                hash_token("r")
            ),
        )
        .unwrap();
        let tokens = Tokens::load(&file).unwrap();
        assert_eq!(tokens.role_of("a-secret"), Some(Role::Admin));
        assert_eq!(tokens.role_of("r"), Some(Role::Read));
        assert_eq!(tokens.role_of("nope"), None);
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        std::fs::write(&file, "root abc\n").unwrap();
        assert!(Tokens::load(&file).is_err());
    }
}
