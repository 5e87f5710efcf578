//! Decryption of Graph rich-notification `encryptedContent`:
//! RSA-OAEP (SHA-1) unwraps a 32-byte key; HMAC-SHA256 over the encrypted data is verified
//! in constant time; AES-256-CBC with IV = key[0..16] and PKCS#7 padding gives the JSON.

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

/// The `encryptedContent` object of a change notification.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedContent {
    /// Base64 AES-CBC ciphertext of the resource JSON.
    pub data: String,
    /// Base64 RSA-OAEP-wrapped symmetric key.
    pub data_key: String,
    /// Base64 HMAC-SHA256 of the (decoded) data.
    pub data_signature: String,
    /// The id we gave the certificate when creating the subscription.
    #[serde(default)]
    pub encryption_certificate_id: Option<String>,
    /// SHA-1 thumbprint of the certificate.
    #[serde(default)]
    pub encryption_certificate_thumbprint: Option<String>,
}

/// Why `encryptedContent` could not be decrypted. No variant carries key or plaintext bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    #[error("dataKey could not be unwrapped with the private key")]
    KeyUnwrap,
    #[error("unwrapped key is {0} bytes, expected 32")]
    KeyLength(usize),
    #[error("dataSignature does not match the data (tampered or wrong key)")]
    Signature,
    #[error("data could not be decrypted (bad length or padding)")]
    Cipher,
}

/// Decrypts `content` with `key`; returns the plaintext resource JSON bytes.
pub fn decrypt_content(
    content: &EncryptedContent,
    key: &OaepPrivateDecryptingKey,
) -> Result<Vec<u8>, DecryptError> {
    let wrapped = STANDARD
        .decode(&content.data_key)
        .map_err(|_| DecryptError::Base64("dataKey"))?;
    let mut data = STANDARD
        .decode(&content.data)
        .map_err(|_| DecryptError::Base64("data"))?;
    let signature = STANDARD
        .decode(&content.data_signature)
        .map_err(|_| DecryptError::Base64("dataSignature"))?;

    let mut key_buf = zeroize::Zeroizing::new(vec![0u8; key.min_output_size()]);
    let symmetric = key
        .decrypt(&OAEP_SHA1_MGF1SHA1, &wrapped, &mut key_buf, None)
        .map_err(|_| DecryptError::KeyUnwrap)?;
    if symmetric.len() != 32 {
        return Err(DecryptError::KeyLength(symmetric.len()));
    }

    let mac_key = hmac::Key::new(hmac::HMAC_SHA256, symmetric);
    hmac::verify(&mac_key, &data, &signature).map_err(|_| DecryptError::Signature)?;

    let mut iv = [0u8; 16];
    iv.copy_from_slice(&symmetric[..16]);
    let cipher_key =
        UnboundCipherKey::new(&AES_256, symmetric).map_err(|_| DecryptError::Cipher)?;
    let aes = PaddedBlockDecryptingKey::cbc_pkcs7(cipher_key).map_err(|_| DecryptError::Cipher)?;
    let plaintext = aes
        .decrypt(&mut data, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| DecryptError::Cipher)?;
    Ok(plaintext.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::secrets::IngressSecrets;
    use crate::support::secret::SecretDocument;

    const VECTOR: &str =
        include_str!("../../tests/vectors/graph-rich-notification/encrypted-content.json");
    const KEY_PEM: &str =
        include_str!("../../tests/vectors/graph-rich-notification/private-key.pem");

    fn vector_key() -> IngressSecrets {
        let doc = serde_json::json!({ "decryption_keys": { "custom-id-for-testing": KEY_PEM } });
        IngressSecrets::from_json(&doc.to_string()).unwrap()
    }

    #[test]
    fn decrypts_the_microsoft_sdk_vector() {
        let secrets = vector_key();
        let key = secrets.decryption_key("custom-id-for-testing").unwrap();
        let content: EncryptedContent = serde_json::from_str(VECTOR).unwrap();
        let plaintext = decrypt_content(&content, key).unwrap();
        let message: serde_json::Value = serde_json::from_slice(&plaintext).unwrap();
        assert_eq!(message["etag"], "1625126194597");
        assert_eq!(message["body"]["content"], "Hello World");
        assert_eq!(message["body"]["contentType"], "text");
    }

    #[test]
    fn tampered_data_fails_the_signature_check() {
        let secrets = vector_key();
        let key = secrets.decryption_key("custom-id-for-testing").unwrap();
        let mut content: EncryptedContent = serde_json::from_str(VECTOR).unwrap();
        let mut data = STANDARD.decode(&content.data).unwrap();
        data[10] ^= 1;
        content.data = STANDARD.encode(data);
        assert_eq!(decrypt_content(&content, key), Err(DecryptError::Signature));
    }

    #[test]
    fn tampered_key_or_bad_base64_is_refused() {
        let secrets = vector_key();
        let key = secrets.decryption_key("custom-id-for-testing").unwrap();
        let mut content: EncryptedContent = serde_json::from_str(VECTOR).unwrap();
        let mut wrapped = STANDARD.decode(&content.data_key).unwrap();
        wrapped[0] ^= 0x80;
        content.data_key = STANDARD.encode(wrapped);
        assert_eq!(decrypt_content(&content, key), Err(DecryptError::KeyUnwrap));
        content.data_key = "!!!".into();
        assert_eq!(
            decrypt_content(&content, key),
            Err(DecryptError::Base64("dataKey"))
        );
    }
}
