//! The ingress part of the secrets: what the internet-facing webhook needs to authenticate and
//! open deliveries (Graph `clientState` values, Standard Webhooks HMAC keys, notification
//! decryption keys, the Sentinel callers and API keys). Never the Graph credential.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

use serde_json::Value;

use crate::support::secret::{
    GRAPH_FIELDS, INGRESS_FIELDS, SecretDocument, SecretString, SecretsError, own_fields, take,
};

/// Shortest Sentinel API key accepted in the secrets.
pub const MIN_API_KEY_LEN: usize = 32;

/// The ingress part: what the webhook needs to authenticate and open deliveries.
pub struct IngressSecrets {
    /// Accepted `clientState` values (several during rotation); the first is used for new
    /// subscriptions.
    pub client_states: Vec<SecretString>,
    /// Standard Webhooks keys (`whsec_...`) accepted on the Sentinel endpoint, decoded when
    /// the secrets load.
    pub webhook_hmac_keys: Vec<super::signature::WebhookKey>,
    /// The tenants each key (same position) may name; `None` where the key lists none.
    pub webhook_key_tenants: Vec<Option<Vec<String>>>,
    /// Callers whose Entra ID tokens are accepted on the Sentinel endpoint (managed identities
    /// by object id, applications by application id).
    pub sentinel_callers: super::entra::CallerAllowList,
    /// Static API keys accepted in `x-api-key` on the Sentinel endpoint (several for
    /// rotation); none by default, which turns the method off.
    pub sentinel_api_keys: Vec<SecretString>,
    /// The tenants each API key (same position) may name; `None` where the key lists none.
    pub sentinel_api_key_tenants: Vec<Option<Vec<String>>>,
    decryption_keys: HashMap<String, Arc<OaepPrivateDecryptingKey>>,
}

impl fmt::Debug for IngressSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressSecrets")
            .field("client_states", &self.client_states.len())
            .field("webhook_hmac_keys", &self.webhook_hmac_keys.len())
            .field("sentinel_callers", &self.sentinel_callers)
            .field("sentinel_api_keys", &self.sentinel_api_keys.len())
            .field("decryption_keys", &self.decryption_keys.keys())
            .finish()
    }
}

impl SecretDocument for IngressSecrets {
    const PART: &'static str = "ingress secrets";

    fn from_json(json: &str) -> Result<Self, SecretsError> {
        let mut fields = own_fields(json, INGRESS_FIELDS, GRAPH_FIELDS)?;
        let client_states = take(&mut fields, "client_states", "a list of strings")?;
        let (hmac_keys, webhook_key_tenants) = keys_with_tenants(&mut fields, "webhook_hmac_keys")?;
        let webhook_hmac_keys = hmac_keys
            .iter()
            .enumerate()
            .map(|(position, key)| {
                super::signature::WebhookKey::parse(key.expose()).map_err(|e| {
                    SecretsError::Invalid(format!("webhook_hmac_keys[{position}] {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sentinel_callers: super::entra::CallerAllowList = take(
            &mut fields,
            "sentinel_callers",
            "an object with the lists object_ids and app_ids",
        )?
        .unwrap_or_default();
        let sentinel_callers = sentinel_callers
            .normalised()
            .map_err(SecretsError::Invalid)?;
        let (sentinel_api_keys, sentinel_api_key_tenants) =
            keys_with_tenants(&mut fields, "sentinel_api_keys")?;
        let min = MIN_API_KEY_LEN;
        if let Some(position) = sentinel_api_keys
            .iter()
            .position(|k| k.expose().trim().len() < min)
        {
            return Err(SecretsError::Invalid(format!(
                "sentinel_api_keys[{position}] is shorter than {min} characters"
            )));
        }
        let pems: HashMap<String, SecretString> = take(
            &mut fields,
            "decryption_keys",
            "an object of encryptionCertificateId to PEM private key",
        )?
        .unwrap_or_default();
        let mut decryption_keys = HashMap::new();
        for (id, pem) in pems {
            let key = parse_decryption_key(pem.expose())
                .ok_or_else(|| SecretsError::BadDecryptionKey { id: id.clone() })?;
            decryption_keys.insert(id, Arc::new(key));
        }
        Ok(Self {
            client_states: client_states.unwrap_or_default(),
            webhook_hmac_keys,
            webhook_key_tenants,
            sentinel_callers,
            sentinel_api_keys,
            sentinel_api_key_tenants,
            decryption_keys,
        })
    }
}

impl IngressSecrets {
    /// The RSA-OAEP key for a subscription's `encryptionCertificateId`.
    pub fn decryption_key(&self, certificate_id: &str) -> Option<&OaepPrivateDecryptingKey> {
        self.decryption_keys.get(certificate_id).map(Arc::as_ref)
    }

    /// The same key, shared, for decryption on another thread.
    pub fn shared_decryption_key(
        &self,
        certificate_id: &str,
    ) -> Option<Arc<OaepPrivateDecryptingKey>> {
        self.decryption_keys.get(certificate_id).cloned()
    }
}

/// A list of keys, each a string or `{"key": "…", "tenants": ["<tenant id>", …]}` (the
/// tenants a caller holding that key may name). Errors name the field and position, never a
/// value.
#[allow(clippy::type_complexity)]
fn keys_with_tenants(
    fields: &mut serde_json::Map<String, Value>,
    name: &str,
) -> Result<(Vec<SecretString>, Vec<Option<Vec<String>>>), SecretsError> {
    let entries: Vec<Value> = take(
        fields,
        name,
        "a list of keys, each a string or {\"key\": \"...\", \"tenants\": [\"<tenant id>\"]}",
    )?
    .unwrap_or_default();
    let mut keys = Vec::with_capacity(entries.len());
    let mut tenants = Vec::with_capacity(entries.len());
    for (position, entry) in entries.into_iter().enumerate() {
        let bad = |what: &str| SecretsError::Invalid(format!("{name}[{position}] {what}"));
        match entry {
            Value::String(key) => {
                keys.push(SecretString::new(key));
                tenants.push(None);
            }
            Value::Object(mut object) => {
                let Some(Value::String(key)) = object.remove("key") else {
                    return Err(bad("needs a \"key\" string"));
                };
                keys.push(SecretString::new(key));
                let listed = match object.remove("tenants") {
                    None => None,
                    Some(Value::Array(list)) => Some(
                        list.iter()
                            .map(|t| {
                                t.as_str()
                                    .map(|t| t.trim().to_ascii_lowercase())
                                    .filter(|t| uuid::Uuid::try_parse(t).is_ok())
                                    .ok_or_else(|| bad("has a tenant that is not a GUID"))
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    ),
                    Some(_) => return Err(bad("\"tenants\" must be a list of tenant ids")),
                };
                if let Some(unknown) = object.keys().next() {
                    return Err(bad(&format!(
                        "has an unknown field `{unknown}`, expected key and tenants"
                    )));
                }
                tenants.push(listed);
            }
            _ => return Err(bad("must be a string or an object with key and tenants")),
        }
    }
    Ok((keys, tenants))
}

fn parse_decryption_key(pem: &str) -> Option<OaepPrivateDecryptingKey> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    let key = PrivateDecryptingKey::from_pkcs8(der.secret_pkcs8_der()).ok()?;
    OaepPrivateDecryptingKey::new(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_decryption_key_is_named_without_its_value() {
        let err =
            IngressSecrets::from_json(r#"{"decryption_keys":{"cert-1":"not a pem"}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "decryption key \"cert-1\" is not a usable PKCS#8 RSA private key"
        );
    }

    #[test]
    fn sentinel_callers_and_api_keys_are_checked_when_they_load() {
        let ok = IngressSecrets::from_json(
            r#"{"sentinel_callers":{"object_ids":["6E7B768E-07E2-4810-8459-485F84F8F204"]},
                "sentinel_api_keys":["0123456789abcdef0123456789abcdef"]}"#,
        )
        .unwrap();
        assert_eq!(
            ok.sentinel_callers.object_ids,
            ["6e7b768e-07e2-4810-8459-485f84f8f204"]
        );
        assert_eq!(ok.sentinel_api_keys.len(), 1);
        let short = IngressSecrets::from_json(r#"{"sentinel_api_keys":["hunter2"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("sentinel_api_keys[0] is shorter than 32"),
            "{short}"
        );
        assert!(!short.contains("hunter2"), "{short}");
        let typo = IngressSecrets::from_json(r#"{"sentinel_callers":{"object_id":["x"]}}"#)
            .unwrap_err()
            .to_string();
        assert!(typo.contains("sentinel_callers"), "{typo}");
        let bad = IngressSecrets::from_json(r#"{"sentinel_callers":{"app_ids":["nope"]}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("sentinel_callers.app_ids[0] is not a GUID"),
            "{bad}"
        );
    }

    #[test]
    fn an_undecodable_hmac_key_is_named_by_position_not_value() {
        let err = IngressSecrets::from_json(
            r#"{"webhook_hmac_keys":["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","whsec_hunter2!!"]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "secrets document is not valid: webhook_hmac_keys[1] is not a Standard Webhooks key (whsec_ followed by base64)"
        );
        assert!(!err.contains("hunter2"), "{err}");
        // Unpadded keys load.
        let ok = IngressSecrets::from_json(
            r#"{"webhook_hmac_keys":["whsec_c2lnbmluZy1rZXktb2YtMjUtYnl0ZXMhIQ"]}"#,
        );
        assert_eq!(ok.unwrap().webhook_hmac_keys.len(), 1);
        // A key shorter than Standard Webhooks' 24 bytes is refused, by position.
        let short = "whsec_c2lnbmluZy1rZXktb2YtMjMtYnl0ZXM=";
        let err = IngressSecrets::from_json(&format!(
            r#"{{"webhook_hmac_keys":["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","{short}"]}}"#
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "secrets document is not valid: webhook_hmac_keys[1] is 23 bytes long; Standard Webhooks keys are at least 24 random bytes"
        );
        assert!(!err.contains("c2lnbmluZy1rZXktb2YtMjMtYnl0ZXM"), "{err}");
    }

    #[test]
    fn keys_may_list_the_tenants_they_speak_for() {
        let ok = IngressSecrets::from_json(
            r#"{"webhook_hmac_keys": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                 {"key": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "tenants": ["2C1D8D6E-5A4B-4C3D-9E8F-7A6B5C4D3E2F"]}],
                "sentinel_api_keys": [{"key": "0123456789abcdef0123456789abcdef"}]}"#,
        )
        .unwrap();
        assert_eq!(
            ok.webhook_key_tenants,
            [
                None,
                Some(vec!["2c1d8d6e-5a4b-4c3d-9e8f-7a6b5c4d3e2f".to_owned()])
            ]
        );
        assert_eq!(ok.sentinel_api_key_tenants, [None]);
        for (json, expected) in [
            (
                r#"{"webhook_hmac_keys": [{"key": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "tenants": ["contoso"]}]}"#,
                "webhook_hmac_keys[0] has a tenant that is not a GUID",
            ),
            (
                r#"{"sentinel_api_keys": [{"secret": "hunter2hunter2hunter2hunter2hunter2"}]}"#,
                "sentinel_api_keys[0] needs a \"key\" string",
            ),
            (
                r#"{"sentinel_api_keys": [{"key": "hunter2hunter2hunter2hunter2hunter2", "tenant": []}]}"#,
                "sentinel_api_keys[0] has an unknown field `tenant`",
            ),
        ] {
            let err = IngressSecrets::from_json(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(
                !err.contains("hunter2") && !err.contains("MfKQ9r8"),
                "{err}"
            );
        }
    }
}
