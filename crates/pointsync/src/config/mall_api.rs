//! `[mall_api]`: the listener, the bearer tokens (a file or a SHA-256 each) and their scopes.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// A mall API scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// `GET /v1/members/…`.
    #[serde(rename = "members:read")]
    MembersRead,
    /// `POST /v1/members/{openid}/adjustments`.
    #[serde(rename = "points:adjust")]
    PointsAdjust,
    /// `POST /v1/parkings`, `GET /v1/parkings/{id}`.
    #[serde(rename = "parkings:write")]
    ParkingsWrite,
}

impl Scope {
    /// As configured.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MembersRead => "members:read",
            Self::PointsAdjust => "points:adjust",
            Self::ParkingsWrite => "parkings:write",
        }
    }
}

/// One `[[mall_api.tokens]]`: a named bearer token and what it may do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The caller (`miniprogram`, `pos`, `carpark`): logs and metrics name it.
    pub name: String,
    /// A file holding the token (at least 32 characters).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The token's SHA-256, hex, instead of the file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

/// A configured token: its name, SHA-256 and scopes (the secret itself is not kept).
#[derive(Clone)]
pub struct ApiToken {
    /// Name.
    pub name: String,
    /// SHA-256 of the token.
    pub digest: [u8; 32],
    /// Scopes.
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// `[mall_api]`: the API the mall's own systems call. On when the section is present.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MallApiConfig {
    /// Listener (loopback by default: put it behind the mall's gateway).
    pub listen: SocketAddr,
    /// Bearer tokens.
    pub tokens: Vec<TokenConfig>,
    /// How long WeChat's pending-points answer for a member is reused.
    pub pending_cache_ms: u64,
    /// Largest request body (bytes).
    pub body_limit: usize,
    /// Niceness (0–19) of the mall API's threads: higher yields more of the CPU to WeChat's
    /// callbacks and the syncs under load (0: same priority).
    pub nice: u8,
}

impl Default for MallApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            tokens: Vec::new(),
            pending_cache_ms: 30_000,
            body_limit: 16 * 1024,
            nice: 10,
        }
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of a token.
pub fn token_digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl MallApiConfig {
    /// Checks the tokens' settings without reading their files (that happens at start-up).
    pub fn check_tokens(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("mall_api.tokens[{i}]");
            match (&t.token_file, &t.sha256) {
                (Some(_), None) => {}
                (None, Some(h)) => {
                    hex32(h).ok_or_else(|| {
                        ConfigError(format!(
                            "key `{key}.sha256`: expected 64 hexadecimal characters (the SHA-256 \
                             of the token)"
                        ))
                    })?;
                }
                _ => {
                    return Err(ConfigError(format!(
                        "key `{key}`: give exactly one of `token_file` and `sha256`"
                    )));
                }
            }
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                return Err(ConfigError(format!(
                    "key `{key}.name`: `{}` is empty or used by another token",
                    t.name
                )));
            }
        }
        Ok(())
    }

    /// The tokens, read from their files; errors name the key.
    pub fn load_tokens(&self) -> Result<Vec<ApiToken>, ConfigError> {
        let mut out: Vec<ApiToken> = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("mall_api.tokens[{i}]");
            let digest = match (&t.token_file, &t.sha256) {
                (Some(path), None) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        ConfigError(format!(
                            "key `{key}.token_file`: cannot read {}: {e}",
                            path.display()
                        ))
                    })?;
                    let token = text.trim();
                    if token.len() < 32 {
                        return Err(ConfigError(format!(
                            "key `{key}.token_file`: the token in {} is shorter than 32 characters",
                            path.display()
                        )));
                    }
                    token_digest(token)
                }
                (None, Some(h)) => hex32(h).ok_or_else(|| {
                    ConfigError(format!(
                        "key `{key}.sha256`: expected 64 hexadecimal characters (the SHA-256 of \
                         the token)"
                    ))
                })?,
                _ => {
                    return Err(ConfigError(format!(
                        "key `{key}`: give exactly one of `token_file` and `sha256`"
                    )));
                }
            };
            if t.name.is_empty() || out.iter().any(|o| o.name == t.name) {
                return Err(ConfigError(format!(
                    "key `{key}.name`: `{}` is empty or used by another token",
                    t.name
                )));
            }
            if out.iter().any(|o| o.digest == digest) {
                return Err(ConfigError(format!(
                    "key `{key}`: the same token as another entry; give each caller its own"
                )));
            }
            out.push(ApiToken {
                name: t.name.clone(),
                digest,
                scopes: t.scopes.clone(),
            });
        }
        Ok(out)
    }
}
