//! Client-credentials tokens for Microsoft Graph, per tenant, with a client secret or a
//! certificate (`client_assertion` JWT), cached until shortly before they expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use tokio::sync::Mutex;

use std::sync::Arc;

use super::GraphError;
use crate::graph::credential::GraphSecrets;
use crate::support::secret::SecretString;
use crate::vault::SecretStore;

/// Tokens are renewed this long before `expires_in` runs out.
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);

/// How the application proves its identity.
#[derive(Clone)]
pub enum ClientCredential {
    /// A client secret.
    Secret(SecretString),
    /// A certificate: PEM private key and the SHA-256 thumbprint of the certificate's DER.
    Certificate {
        private_key_pem: SecretString,
        thumbprint_sha256: Vec<u8>,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Where the credential comes from at each token request.
#[derive(Clone)]
enum CredentialSource {
    Fixed(ClientCredential),
    /// Read from the secret store each time a token is fetched, so a rotated client secret or
    /// certificate is used as soon as the store's cache refreshes.
    Store(Arc<dyn SecretStore<GraphSecrets>>),
}

/// Acquires and caches app-only tokens.
pub struct TokenProvider {
    http: reqwest::Client,
    authority: String,
    client_id: String,
    credential: CredentialSource,
    scope: String,
    cache: Mutex<HashMap<String, (SecretString, Instant)>>,
}

impl TokenProvider {
    /// `authority` is e.g. `https://login.microsoftonline.com`; `scope` e.g.
    /// `https://graph.microsoft.com/.default`.
    pub fn new(
        http: reqwest::Client,
        authority: impl Into<String>,
        client_id: impl Into<String>,
        credential: ClientCredential,
        scope: impl Into<String>,
    ) -> Self {
        Self::with_source(
            http,
            authority,
            client_id,
            CredentialSource::Fixed(credential),
            scope,
        )
    }

    /// As [`TokenProvider::new`], reading the credential from `store` at every token request.
    pub fn from_store(
        http: reqwest::Client,
        authority: impl Into<String>,
        client_id: impl Into<String>,
        store: Arc<dyn SecretStore<GraphSecrets>>,
        scope: impl Into<String>,
    ) -> Self {
        Self::with_source(
            http,
            authority,
            client_id,
            CredentialSource::Store(store),
            scope,
        )
    }

    fn with_source(
        http: reqwest::Client,
        authority: impl Into<String>,
        client_id: impl Into<String>,
        credential: CredentialSource,
        scope: impl Into<String>,
    ) -> Self {
        Self {
            http,
            authority: authority.into().trim_end_matches('/').to_owned(),
            client_id: client_id.into(),
            credential,
            scope: scope.into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A provider for the same application and credential with another `scope` (e.g.
    /// `https://management.azure.com/.default` for Azure Resource Manager), caching its own
    /// tokens.
    pub fn with_scope(&self, scope: impl Into<String>) -> Self {
        Self::with_source(
            self.http.clone(),
            self.authority.clone(),
            self.client_id.clone(),
            self.credential.clone(),
            scope,
        )
    }

    async fn credential(&self) -> Result<ClientCredential, GraphError> {
        match &self.credential {
            CredentialSource::Fixed(credential) => Ok(credential.clone()),
            CredentialSource::Store(store) => store
                .load()
                .await
                .map_err(|e| GraphError::TokenUnavailable(e.to_string()))?
                .credential()
                .ok_or_else(|| {
                    GraphError::Config(
                        "secrets have neither a client secret nor a certificate".into(),
                    )
                }),
        }
    }

    /// A valid access token for `tenant`, from the cache or the token endpoint.
    pub async fn token(&self, tenant: &str) -> Result<SecretString, GraphError> {
        let mut cache = self.cache.lock().await;
        if let Some((token, expires)) = cache.get(tenant)
            && Instant::now() < *expires
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch(tenant).await?;
        let expires = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN);
        cache.insert(tenant.to_owned(), (token.clone(), expires));
        Ok(token)
    }

    /// Drops a cached token (after Graph answered 401 with it).
    pub async fn invalidate(&self, tenant: &str) {
        self.cache.lock().await.remove(tenant);
    }

    async fn fetch(&self, tenant: &str) -> Result<(SecretString, Duration), GraphError> {
        let url = format!("{}/{tenant}/oauth2/v2.0/token", self.authority);
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
            ("grant_type", "client_credentials".into()),
        ];
        match &self.credential().await? {
            ClientCredential::Secret(secret) => {
                form.push(("client_secret", secret.expose().to_owned()));
            }
            ClientCredential::Certificate {
                private_key_pem,
                thumbprint_sha256,
            } => {
                let assertion =
                    client_assertion(&url, &self.client_id, private_key_pem, thumbprint_sha256)?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let response = self
            .http
            .post(&url)
            .form(&form)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| GraphError::TokenUnavailable(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body: TokenErrorBody = response.json().await.unwrap_or_default();
            // AADSTS descriptions name the problem, never the secret.
            let first_line = body
                .error_description
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            return Err(if status.is_server_error() {
                GraphError::TokenUnavailable(format!("token endpoint answered {status}"))
            } else {
                GraphError::TokenRefused {
                    error: body.error,
                    description: first_line,
                }
            });
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|e| GraphError::TokenUnavailable(format!("bad token response: {e}")))?;
        Ok((
            SecretString::new(body.access_token),
            Duration::from_secs(body.expires_in),
        ))
    }
}

/// A signed `client_assertion` (RFC 7523) for the certificate credential, as the current
/// Microsoft identity platform documentation specifies: `alg` PS256, `typ` JWT, `x5t#S256` =
/// base64url SHA-256 thumbprint of the certificate's DER, `aud` = the token URL.
pub fn client_assertion(
    token_url: &str,
    client_id: &str,
    private_key_pem: &SecretString,
    thumbprint_sha256: &[u8],
) -> Result<String, GraphError> {
    if thumbprint_sha256.len() != 32 {
        return Err(GraphError::Config(
            "certificate SHA-256 thumbprint is not 32 bytes".into(),
        ));
    }
    let key = EncodingKey::from_rsa_pem(private_key_pem.expose().as_bytes())
        .map_err(|_| GraphError::Config("certificate private key is not an RSA PEM key".into()))?;
    let mut header = Header::new(Algorithm::PS256);
    header.typ = Some("JWT".into());
    header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(thumbprint_sha256));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    });
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| GraphError::Config(format!("cannot sign client assertion: {e}")))
}
