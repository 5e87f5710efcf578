//! The Graph part of the secrets: the application's identity and credential (client secret,
//! or a certificate's private key with its SHA-256 thumbprint). Only the worker, the renewer
//! and CLI commands that call Graph read it.

use std::fmt;

use rustls_pki_types::pem::PemObject;

use crate::support::secret::{
    GRAPH_FIELDS, INGRESS_FIELDS, SecretDocument, SecretString, SecretsError, hex_decode,
    own_fields, take,
};

/// The Graph part: the application's identity and credential. Only the worker, the renewer and
/// CLI commands that call Graph read it.
pub struct GraphSecrets {
    /// Home tenant of the Graph application.
    pub tenant_id: Option<String>,
    /// Graph application (client) id.
    pub client_id: Option<String>,
    /// Graph application client secret.
    pub client_secret: Option<SecretString>,
    /// PEM private key of the application's certificate (preferred over the secret).
    pub certificate_private_key: Option<SecretString>,
    /// SHA-256 thumbprint of that certificate's DER encoding (`x5t#S256` of the assertion),
    /// from `certificate` (the PEM certificate) or `certificate_thumbprint_sha256` (hex).
    pub certificate_thumbprint_sha256: Option<Vec<u8>>,
    /// What seals a temporary password between its `PATCH` and its delivery
    /// (`intent_sealing_key`: 32 random bytes, base64), so a worker that resumes a case after
    /// another stopped can deliver the password that was set. Without it, such a case sets a
    /// new password and delivers that one.
    pub intent_sealer: Option<std::sync::Arc<crate::support::seal::Sealer>>,
}

impl fmt::Debug for GraphSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphSecrets")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("certificate_private_key", &self.certificate_private_key)
            .field(
                "certificate_thumbprint_sha256",
                &self.certificate_thumbprint_sha256.as_ref().map(|t| t.len()),
            )
            .field("intent_sealer", &self.intent_sealer.is_some())
            .finish()
    }
}

impl SecretDocument for GraphSecrets {
    const PART: &'static str = "Graph credential";

    fn from_json(json: &str) -> Result<Self, SecretsError> {
        let mut fields = own_fields(json, GRAPH_FIELDS, INGRESS_FIELDS)?;
        let tenant_id = take(&mut fields, "tenant_id", "a string")?;
        let client_id = take(&mut fields, "client_id", "a string")?;
        let client_secret = take(&mut fields, "client_secret", "a string")?;
        let certificate_private_key: Option<SecretString> =
            take(&mut fields, "certificate_private_key", "a PEM string")?;
        let certificate: Option<String> = take(&mut fields, "certificate", "a PEM string")?;
        let hex: Option<String> =
            take(&mut fields, "certificate_thumbprint_sha256", "a hex string")?;
        let from_certificate = match certificate {
            Some(pem) => Some(certificate_sha256(&pem).ok_or_else(|| {
                SecretsError::Invalid("`certificate` is not a PEM X.509 certificate".into())
            })?),
            None => None,
        };
        let from_hex = match hex {
            Some(hex) => Some(hex_decode(&hex).filter(|t| t.len() == 32).ok_or_else(|| {
                SecretsError::Invalid("`certificate_thumbprint_sha256` is not 64 hex digits".into())
            })?),
            None => None,
        };
        let certificate_thumbprint_sha256 = from_certificate.or(from_hex);
        let sealing_key: Option<SecretString> =
            take(&mut fields, "intent_sealing_key", "a base64 string")?;
        let intent_sealer = match sealing_key {
            Some(key) => Some(std::sync::Arc::new(
                crate::support::seal::Sealer::from_base64(&key).map_err(|_| {
                    SecretsError::Invalid(
                        "`intent_sealing_key` must be 32 random bytes in base64 (e.g. `openssl rand -base64 32`)"
                            .into(),
                    )
                })?,
            )),
            None => None,
        };
        if certificate_private_key.is_some() && certificate_thumbprint_sha256.is_none() {
            return Err(SecretsError::Invalid(
                "`certificate_private_key` needs `certificate` (the PEM certificate) or \
                 `certificate_thumbprint_sha256`: client assertions carry the certificate's \
                 SHA-256 thumbprint (x5t#S256)"
                    .into(),
            ));
        }
        Ok(Self {
            tenant_id,
            client_id,
            client_secret,
            certificate_private_key,
            certificate_thumbprint_sha256,
            intent_sealer,
        })
    }
}

/// SHA-256 over the DER encoding of a PEM certificate.
fn certificate_sha256(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref())
            .as_ref()
            .to_vec(),
    )
}

impl GraphSecrets {
    /// The Graph credential: the certificate if one is configured, else the client secret.
    pub fn credential(&self) -> Option<crate::graph::ClientCredential> {
        use super::ClientCredential;
        match (
            &self.certificate_private_key,
            &self.certificate_thumbprint_sha256,
        ) {
            (Some(key), Some(thumbprint)) => Some(ClientCredential::Certificate {
                private_key_pem: key.clone(),
                thumbprint_sha256: thumbprint.clone(),
            }),
            _ => self.client_secret.clone().map(ClientCredential::Secret),
        }
    }
}

/// The two parts of the secrets read from one document (a local file may hold both).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::secrets::IngressSecrets;
    use crate::support::secret::SecretDocument;
    use crate::vault::local::{EMBEDDED_DEV_SECRETS, local_graph_client_id};

    const FULL: &str = r#"{"client_id":"app-1","client_secret":"s3cr3t-value",
        "client_states":["state-value-1"],"webhook_hmac_keys":["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}"#;

    #[test]
    fn debug_output_redacts_values() {
        let graph = GraphSecrets::from_json(FULL).unwrap();
        let ingress = IngressSecrets::from_json(FULL).unwrap();
        let printed = format!("{graph:?} {ingress:?}");
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
        assert!(!printed.contains("state-value-1"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn each_part_reads_its_own_fields_of_a_combined_document() {
        let graph = GraphSecrets::from_json(FULL).unwrap();
        assert_eq!(graph.client_id.as_deref(), Some("app-1"));
        assert!(graph.credential().is_some());
        let ingress = IngressSecrets::from_json(FULL).unwrap();
        assert_eq!(ingress.client_states[0].expose(), "state-value-1");
        // A part alone is enough for its reader.
        let only_ingress = IngressSecrets::from_json(r#"{"client_states":["s"]}"#).unwrap();
        assert_eq!(only_ingress.client_states.len(), 1);
        let only_graph = GraphSecrets::from_json(r#"{"client_id":"a","client_secret":"b"}"#);
        assert!(only_graph.unwrap().credential().is_some());
        // The ingress part of a Graph-only document is empty, and the other way round.
        let empty = IngressSecrets::from_json(r#"{"client_id":"a","client_secret":"b"}"#);
        assert!(empty.unwrap().client_states.is_empty());
        let none = GraphSecrets::from_json(r#"{"client_states":["s"]}"#).unwrap();
        assert!(none.credential().is_none());
    }

    #[test]
    fn unknown_fields_are_refused_by_both_parts() {
        for err in [
            IngressSecrets::from_json(r#"{"client_sekret":"x"}"#).unwrap_err(),
            GraphSecrets::from_json(r#"{"client_sekret":"x"}"#).unwrap_err(),
        ] {
            assert!(err.to_string().contains("`client_sekret`"), "{err}");
            assert!(!err.to_string().contains("\"x\""), "{err}");
        }
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named_without_its_value() {
        let err = IngressSecrets::from_json(r#"{"client_states":"hunter2-state"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secrets document is not valid: field `client_states` must be a list of strings"
        );
        let err = GraphSecrets::from_json(r#"{"client_secret":["hunter2"]}"#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = GraphSecrets::from_json(r#"{"client_secret":"hunter2""#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn embedded_dev_secrets_parse() {
        let ingress = IngressSecrets::from_json(EMBEDDED_DEV_SECRETS).unwrap();
        assert!(!ingress.client_states.is_empty());
        assert!(ingress.decryption_key("custom-id-for-testing").is_some());
        let graph = GraphSecrets::from_json(EMBEDDED_DEV_SECRETS).unwrap();
        assert!(graph.credential().is_some());
        assert_eq!(
            local_graph_client_id(EMBEDDED_DEV_SECRETS).as_deref(),
            graph.client_id.as_deref()
        );
    }
}
