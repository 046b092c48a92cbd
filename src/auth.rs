//! Optional authentication, decided before the upgrade.
//!
//! A client presents a token in one of three places, the first found wins:
//!
//! 1. `Authorization: Bearer <token>`, for clients that set headers;
//! 2. the `token` query parameter (`wss://relay/?token=...`);
//! 3. a `Sec-WebSocket-Protocol` entry `bearer.<token>`, the one header a
//!    browser's `new WebSocket(url, protocols)` can set. The 101 then selects
//!    the first other protocol the client offered, so the token does not
//!    come back in the response (`new WebSocket(url, ["wsrelay", "bearer." +
//!    token])`). Offered alone, the bearer entry itself is selected: a
//!    browser that offered protocols fails a 101 that selects none, and the
//!    value goes back only to the client that sent it.
//!
//! The token is accepted if it equals one of `auth.tokens` (compared in
//! constant time) or is a JWT that verifies under `auth.jwt`: signature,
//! algorithm, `exp` (required), `nbf`, and `aud`/`iss` when configured. A
//! JWT's `exp` also ends the connection: the client is closed with 1008 when
//! its token expires. Anything else gets 401 before the upgrade.
//!
//! A JWT may also narrow what its holder may do: `rooms` (names, or
//! `prefix*` patterns such as `"chat:*"`), `publish: false` and
//! `subscribe: false`. A connection outside them gets 403 before the
//! upgrade.
//!
//! It knows HTTP headers and the query string; nothing of the
//! configuration file ([`JwtRules`] is what it is given).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// A JWT verification key: the algorithm decides what kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "algorithm")]
pub enum JwtKey {
    HS256 { secret: String },
    RS256 { public_key_file: PathBuf },
    ES256 { public_key_file: PathBuf },
}

/// How JSON Web Tokens are verified (`auth.jwt`, as the server hands it).
#[derive(Debug, Clone, PartialEq)]
pub struct JwtRules {
    pub key: JwtKey,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Why the authenticator could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read JWT public key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JWT public key file {path} is not a PEM {kind} public key: {source}")]
    Key {
        path: PathBuf,
        kind: &'static str,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

/// Static secrets (API keys, bearer tokens), compared in constant time so
/// that response timing says nothing about how much of a guess was right.
pub struct Secrets(Vec<Vec<u8>>);

impl Secrets {
    pub fn new(secrets: &[String]) -> Self {
        Self(secrets.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    /// Whether `presented` is one of them.
    pub fn contains(&self, presented: &str) -> bool {
        self.0.iter().any(|s| {
            aws_lc_rs::constant_time::verify_slices_are_equal(s, presented.as_bytes()).is_ok()
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header, if it has one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
}

/// Decides whether a handshake may upgrade.
pub struct Authenticator {
    tokens: Secrets,
    jwt: Option<(DecodingKey, Validation)>,
    leeway: Duration,
}

/// A client let in.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// When its credentials run out: a JWT's `exp` (plus leeway).
    pub expires_at: Option<SystemTime>,
    /// The subprotocol to select in the 101, when the token came as one.
    pub protocol: Option<HeaderValue>,
    /// What a JWT's claims allow; everything for a static token or no auth.
    pub grants: Grants,
}

/// What a client may do, from its JWT's `rooms`, `publish` and `subscribe`
/// claims; a claim that is absent allows everything it would restrict.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Grants {
    /// Room names, or `prefix*` patterns (`"chat:*"`); `None`: any room.
    pub rooms: Option<Vec<String>>,
    /// `Some(false)`: may not send.
    pub publish: Option<bool>,
    /// `Some(false)`: may not receive.
    pub subscribe: Option<bool>,
}

impl Grants {
    /// Whether these grants cover joining `room` to send and/or receive.
    pub fn allow(&self, room: &str, sends: bool, receives: bool) -> bool {
        let room_ok = self.rooms.as_ref().is_none_or(|patterns| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => p == room,
            })
        });
        room_ok
            && (!sends || self.publish != Some(false))
            && (!receives || self.subscribe != Some(false))
    }
}

/// Why a client was refused; the text goes into the 401 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
    Expired,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => {
                "missing token: send Authorization: Bearer, ?token= or a bearer.<token> subprotocol"
            }
            Self::Invalid => "invalid token",
            Self::Expired => "token expired",
        }
    }
}

/// The claims the relay looks at; the signature covers all of them.
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(flatten)]
    grants: Grants,
}

const PROTOCOL_PREFIX: &str = "bearer.";

impl Authenticator {
    /// Builds the authenticator from static `tokens` and JWT rules,
    /// reading any public key file now, so a bad file stops start-up
    /// instead of refusing every client later. `None` when auth is off
    /// (neither is given).
    pub fn new(tokens: &[String], jwt: Option<&JwtRules>) -> Result<Option<Self>, AuthError> {
        if tokens.is_empty() && jwt.is_none() {
            return Ok(None);
        }
        let leeway = jwt.map_or(Duration::ZERO, |j| j.leeway);
        let jwt = match jwt {
            None => None,
            Some(jwt) => {
                let (key, algorithm) = match &jwt.key {
                    JwtKey::HS256 { secret } => (
                        DecodingKey::from_secret(secret.as_bytes()),
                        Algorithm::HS256,
                    ),
                    JwtKey::RS256 { public_key_file } => (
                        read_key(public_key_file, "RSA", DecodingKey::from_rsa_pem)?,
                        Algorithm::RS256,
                    ),
                    JwtKey::ES256 { public_key_file } => (
                        read_key(public_key_file, "EC (P-256)", DecodingKey::from_ec_pem)?,
                        Algorithm::ES256,
                    ),
                };
                let mut v = Validation::new(algorithm);
                v.leeway = jwt.leeway.as_secs();
                v.validate_nbf = true;
                // Without a configured audience any `aud` is acceptable.
                v.validate_aud = jwt.audience.is_some();
                if let Some(aud) = &jwt.audience {
                    v.set_audience(&[aud]);
                }
                if let Some(iss) = &jwt.issuer {
                    v.set_issuer(&[iss]);
                }
                Some((key, v))
            }
        };
        Ok(Some(Self {
            tokens: Secrets::new(tokens),
            jwt,
            leeway,
        }))
    }

    /// Checks a handshake's credentials.
    pub fn admit(&self, query: Option<&str>, headers: &HeaderMap) -> Result<Admission, Refusal> {
        let (token, protocol) = find_token(query, headers).ok_or(Refusal::Missing)?;
        let mut admission = Admission {
            expires_at: None,
            protocol,
            grants: Grants::default(),
        };
        if self.tokens.contains(&token) {
            return Ok(admission);
        }
        let Some((key, validation)) = &self.jwt else {
            return Err(Refusal::Invalid);
        };
        match jsonwebtoken::decode::<Claims>(token.as_bytes(), key, validation) {
            Ok(data) => {
                // A signed `exp` past what the clock can hold never comes.
                admission.expires_at = UNIX_EPOCH
                    .checked_add(Duration::from_secs(data.claims.exp))
                    .and_then(|t| t.checked_add(self.leeway));
                admission.grants = data.claims.grants;
                Ok(admission)
            }
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(Refusal::Expired)
            }
            Err(_) => Err(Refusal::Invalid),
        }
    }
}

fn read_key(
    path: &PathBuf,
    kind: &'static str,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
) -> Result<DecodingKey, AuthError> {
    let pem = std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&pem).map_err(|source| AuthError::Key {
        path: path.clone(),
        kind,
        source,
    })
}

/// The subprotocols a request offers (`Sec-WebSocket-Protocol`), trimmed.
pub fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The presented token, and the subprotocol to answer with if it came as one.
fn find_token(query: Option<&str>, headers: &HeaderMap) -> Option<(String, Option<HeaderValue>)> {
    if let Some(token) = bearer_token(headers) {
        return Some((token.to_owned(), None));
    }
    if let Some(token) = crate::query::param(query, "token").filter(|t| !t.is_empty()) {
        return Some((token, None));
    }
    let offered: Vec<&str> = offered_protocols(headers).collect();
    let token = offered
        .iter()
        .find_map(|p| p.strip_prefix(PROTOCOL_PREFIX))
        .filter(|t| !t.is_empty())?;
    let answer = offered
        .iter()
        .find(|p| !p.starts_with(PROTOCOL_PREFIX))
        .or_else(|| offered.iter().find(|p| p.starts_with(PROTOCOL_PREFIX)))
        .and_then(|p| HeaderValue::from_str(p).ok());
    Some((token.to_owned(), answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn tokens_are_found_in_each_place_in_order() {
        let h = headers(&[("authorization", "Bearer from-header")]);
        assert_eq!(
            find_token(Some("token=from-query"), &h).unwrap().0,
            "from-header"
        );
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(
            find_token(Some("a=1&token=q%2Bv+x&b=2"), &h).unwrap().0,
            "q+v x"
        );
        let h = headers(&[("sec-websocket-protocol", "wsrelay, bearer.from-protocol")]);
        let (token, answer) = find_token(Some("tokens=no"), &h).unwrap();
        assert_eq!(token, "from-protocol");
        assert_eq!(answer.unwrap(), "wsrelay");
        // Offered alone, the bearer entry is selected: a browser requires
        // the 101 to name one of the protocols it offered.
        let h = headers(&[("sec-websocket-protocol", "bearer.only")]);
        let (token, answer) = find_token(None, &h).unwrap();
        assert_eq!(token, "only");
        assert_eq!(answer.unwrap(), "bearer.only");
        assert_eq!(find_token(Some("token="), &HeaderMap::new()), None);
        // A malformed escape is a token as written, which matches nothing.
        assert_eq!(
            find_token(Some("token=%zz"), &HeaderMap::new()),
            Some(("%zz".into(), None))
        );
        assert_eq!(
            find_token(None, &headers(&[("authorization", "Bearer ")])),
            None
        );
    }

    #[test]
    fn static_tokens_admit_without_expiry() {
        let auth = Authenticator::new(&["s3cret".into()], None)
            .unwrap()
            .unwrap();
        let ok = auth.admit(Some("token=s3cret"), &HeaderMap::new()).unwrap();
        assert_eq!(ok.expires_at, None);
        assert_eq!(
            auth.admit(Some("token=s3cre"), &HeaderMap::new()),
            Err(Refusal::Invalid)
        );
        assert_eq!(auth.admit(None, &HeaderMap::new()), Err(Refusal::Missing));
        assert!(Authenticator::new(&[], None).unwrap().is_none());
    }

    #[test]
    fn a_missing_key_file_is_named() {
        let rules = JwtRules {
            key: JwtKey::ES256 {
                public_key_file: "/nonexistent/key.pem".into(),
            },
            audience: None,
            issuer: None,
            leeway: Duration::ZERO,
        };
        let e = Authenticator::new(&[], Some(&rules))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/key.pem"), "{e}");
    }
}
