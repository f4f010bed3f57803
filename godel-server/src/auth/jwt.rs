//! JSON Web Tokens, for teams whose identity provider already issues them.
//!
//! One algorithm is accepted, the one `[auth.jwt]` names: a token whose
//! header asks for another (`none`, or HS256 signed with the RS256 public key
//! as its secret) is refused before its signature is looked at. `exp`,
//! `nbf`, `iss`, `aud` and `sub` are required; the token may live at most
//! `max_lifetime`; its `tenant` and `role` claims say who it acts as.

use std::time::Duration;

use godel_core::{Role, TenantId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{JwtConfig, JwtKey};

/// Longest token accepted; anything longer is refused unparsed.
pub(crate) const MAX_TOKEN: usize = 8 * 1024;

/// Checks tokens against the configured key.
pub(crate) struct Verifier {
    key: DecodingKey,
    validation: Validation,
    max_lifetime: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

/// Who a valid token says its bearer is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) subject: String,
    pub(crate) tenant: TenantId,
    pub(crate) role: Role,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    role: String,
    exp: u64,
    nbf: u64,
    iat: Option<u64>,
}

impl Verifier {
    /// Builds the verifier, reading the public key file if there is one.
    pub(crate) fn new(config: &JwtConfig) -> anyhow::Result<Self> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read auth.jwt.public_key_file {}: {e}", path.display()))
        };
        let invalid = |path: &std::path::Path, e: jsonwebtoken::errors::Error| {
            anyhow::anyhow!("invalid auth.jwt.public_key_file {}: {e}", path.display())
        };
        let (algorithm, key) = match &config.key {
            JwtKey::Hs256(secret) => (Algorithm::HS256, DecodingKey::from_secret(secret)),
            JwtKey::EdDsa(path) => {
                (Algorithm::EdDSA, DecodingKey::from_ed_pem(&read(path)?).map_err(|e| invalid(path, e))?)
            }
            JwtKey::Rs256(path) => {
                (Algorithm::RS256, DecodingKey::from_rsa_pem(&read(path)?).map_err(|e| invalid(path, e))?)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = config.leeway.as_secs();
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        Ok(Self { key, validation, max_lifetime: config.max_lifetime })
    }

    /// The token's identity, or why it is refused (said to the caller: it
    /// names the check that failed, never the token).
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, String> {
        if token.len() > MAX_TOKEN {
            return Err(format!("the token is longer than {MAX_TOKEN} bytes"));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| reason(e.kind()))?;
        let claims = data.claims;
        let born = claims.iat.unwrap_or(claims.nbf).min(claims.nbf);
        if claims.exp.saturating_sub(born) > self.max_lifetime.as_secs() {
            return Err(format!(
                "the token lives longer than the allowed {}",
                humantime::format_duration(self.max_lifetime)
            ));
        }
        let tenant = TenantId::new(&claims.tenant).map_err(|e| format!("invalid tenant claim: {}", e.reason))?;
        let role = claims.role.parse::<Role>().map_err(|e| format!("invalid role claim: {}", e.reason))?;
        if claims.sub.is_empty() {
            return Err("the sub claim is empty".to_owned());
        }
        Ok(Identity { subject: claims.sub, tenant, role })
    }
}

fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted".to_owned(),
        ErrorKind::InvalidAudience => "the token's audience is not accepted".to_owned(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            "the token's algorithm is not the configured one".to_owned()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's {claim} claim is malformed"),
        ErrorKind::Json(_) => "the token's claims are malformed (sub, tenant and role are required)".to_owned(),
        _ => "the token is malformed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::new(&JwtConfig {
            key: JwtKey::Hs256(SECRET.to_vec()),
            issuer: "idp".into(),
            audience: "godel".into(),
            leeway: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(3600),
        })
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn claims() -> serde_json::Value {
        let now = now();
        json!({"sub": "ann", "tenant": "acme", "role": "viewer", "iss": "idp", "aud": "godel", "exp": now + 600, "nbf": now - 1, "iat": now - 1})
    }

    #[test]
    fn a_valid_token_names_its_tenant_and_role() {
        let identity = verifier().verify(&token(&claims())).unwrap();
        assert_eq!(
            identity,
            Identity { subject: "ann".into(), tenant: TenantId::new("acme").unwrap(), role: Role::Viewer }
        );
    }

    #[test]
    fn every_check_refuses() {
        let v = verifier();
        let with = |key: &str, value: serde_json::Value| {
            let mut c = claims();
            c[key] = value;
            v.verify(&token(&c))
        };
        assert!(with("exp", json!(now() - 60)).unwrap_err().contains("expired"));
        assert!(with("nbf", json!(now() + 60)).unwrap_err().contains("not valid yet"));
        assert!(with("iss", json!("other")).unwrap_err().contains("issuer"));
        assert!(with("aud", json!("other")).unwrap_err().contains("audience"));
        assert!(with("exp", json!(now() + 7200)).unwrap_err().contains("longer"));
        assert!(with("role", json!("root")).unwrap_err().contains("role"));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nbf");
        assert!(v.verify(&token(&c)).is_err());
        assert!(v.verify(&"a".repeat(MAX_TOKEN + 1)).unwrap_err().contains("longer"));
    }
}
