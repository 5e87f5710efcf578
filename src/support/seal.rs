//! Sealing a secret value for a short time at rest (a temporary password between its `PATCH`
//! and its delivery): AES-256-GCM (aws-lc-rs) under a key from the vault, with a fresh random
//! nonce each time and what it belongs to (the case and action) as associated data, so a sealed
//! value opens only with the key and only for the record it was sealed for.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::secret::SecretString;

/// Why a value could not be sealed or opened (never the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the sealing key is not 32 bytes of base64")]
    BadKey,
    #[error("the sealed value is not readable")]
    Unreadable,
    #[error("the sealed value does not open with this key for this record")]
    Refused,
    #[error("the system random number generator failed")]
    Random,
}

/// Seals and opens values with one key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// A sealer over a 32-byte key given in base64.
    pub fn from_base64(key: &SecretString) -> Result<Self, SealError> {
        let mut bytes = STANDARD
            .decode(key.expose().trim())
            .map_err(|_| SealError::BadKey)?;
        let unbound = (bytes.len() == 32)
            .then(|| UnboundKey::new(&AES_256_GCM, &bytes).ok())
            .flatten();
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(Self {
            key: LessSafeKey::new(unbound.ok_or(SealError::BadKey)?),
        })
    }

    /// `value` sealed for `record` (base64 of nonce, ciphertext and tag).
    pub fn seal(&self, value: &SecretString, record: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buffer = value.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(record.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| SealError::Refused)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        zeroize::Zeroize::zeroize(&mut buffer);
        Ok(STANDARD.encode(out))
    }

    /// The value `sealed` holds, if it was sealed with this key for `record`.
    pub fn open(&self, sealed: &str, record: &str) -> Result<SecretString, SealError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SealError::Unreadable)?;
        if bytes.len() <= NONCE_LEN {
            return Err(SealError::Unreadable);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unreadable)?;
        let mut buffer = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(record.as_bytes()), &mut buffer)
            .map_err(|_| SealError::Refused)?;
        let value = std::str::from_utf8(plain)
            .map(SecretString::new)
            .map_err(|_| SealError::Unreadable);
        zeroize::Zeroize::zeroize(&mut buffer);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretString {
        SecretString::new(STANDARD.encode([byte; 32]))
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_for_its_record() {
        let sealer = Sealer::from_base64(&key(7)).unwrap();
        let secret = SecretString::new("Tmp-Pa55word!xyz");
        let sealed = sealer.seal(&secret, "case c-1 action 2").unwrap();
        assert!(!sealed.contains("Pa55word"));
        assert_ne!(sealed, sealer.seal(&secret, "case c-1 action 2").unwrap());
        assert_eq!(
            sealer.open(&sealed, "case c-1 action 2").unwrap().expose(),
            "Tmp-Pa55word!xyz"
        );
        assert_eq!(
            sealer.open(&sealed, "case c-2 action 2").unwrap_err(),
            SealError::Refused
        );
        let other = Sealer::from_base64(&key(8)).unwrap();
        assert_eq!(
            other.open(&sealed, "case c-1 action 2").unwrap_err(),
            SealError::Refused
        );
        assert_eq!(
            sealer.open("not base64!", "x").unwrap_err(),
            SealError::Unreadable
        );
        assert_eq!(
            Sealer::from_base64(&SecretString::new("c2hvcnQ=")).unwrap_err(),
            SealError::BadKey
        );
    }
}
