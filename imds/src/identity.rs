//! Signing of the instance identity document.
//!
//! The host owns an RSA key and a certificate for it. `signature` is base64 of the
//! RSA PKCS#1 v1.5 SHA-256 signature over the document bytes; `pkcs7` is a detached CMS
//! SignedData (content type id-data, SHA-256, signer identified by issuer and serial, the
//! certificate included) in base64 without PEM armour, as EC2 serves it. A guest verifies
//! with `openssl smime -verify` against the published certificate (docs/imds.md).

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cms::builder::{SignedDataBuilder, SignerInfoBuilder};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::ContentInfo;
use cms::signed_data::{EncapsulatedContentInfo, SignerIdentifier};
use der::oid::{AssociatedOid, ObjectIdentifier};
use der::{DecodePem, Encode};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;

use crate::error::ImdsError;

/// PKCS#7 `data` content type.
const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");

/// The two encodings a guest can fetch next to the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentSignatures {
    /// Base64 RSA-SHA256 signature, one line.
    pub signature: String,
    /// Base64 DER of a detached PKCS#7 SignedData, wrapped at 64 columns, no armour.
    pub pkcs7: String,
}

pub struct IdentitySigner {
    signing_key: SigningKey<Sha256>,
    certificate: Certificate,
    certificate_pem: String,
}

impl IdentitySigner {
    pub fn load(private_key: &Path, certificate: &Path) -> Result<IdentitySigner, ImdsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| ImdsError::ReadSigningMaterial {
                path: path.to_path_buf(),
                source,
            })
        };
        IdentitySigner::from_pem(&read(private_key)?, &read(certificate)?)
    }

    /// Accepts PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) keys, and
    /// refuses a certificate that does not belong to the key.
    pub fn from_pem(key_pem: &str, certificate_pem: &str) -> Result<IdentitySigner, ImdsError> {
        let unusable = |what: &str, error: &dyn std::fmt::Display| {
            ImdsError::SigningMaterial(format!("{what}: {error}"))
        };
        let private_key = RsaPrivateKey::from_pkcs8_pem(key_pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(key_pem))
            .map_err(|error| unusable("private key", &error))?;
        let certificate = Certificate::from_pem(certificate_pem.as_bytes())
            .map_err(|error| unusable("certificate", &error))?;
        let key_spki = private_key
            .to_public_key()
            .to_public_key_der()
            .map_err(|error| unusable("public key", &error))?;
        let certificate_spki = certificate
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|error| unusable("certificate key", &error))?;
        if key_spki.as_bytes() != certificate_spki.as_slice() {
            return Err(ImdsError::SigningMaterial(
                "the certificate is not for this private key".to_string(),
            ));
        }
        Ok(IdentitySigner {
            signing_key: SigningKey::<Sha256>::new(private_key),
            certificate,
            certificate_pem: certificate_pem.to_string(),
        })
    }

    /// The certificate guests verify against (publish it like AWS's regional certificates).
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn sign(&self, document: &[u8]) -> Result<DocumentSignatures, ImdsError> {
        let failed = |error: &dyn std::fmt::Display| ImdsError::Signing(error.to_string());
        let signature = self.signing_key.sign(document).to_vec();

        let digest = Sha256::digest(document);
        let content = EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        };
        let digest_algorithm = AlgorithmIdentifierOwned {
            oid: Sha256::OID,
            parameters: None,
        };
        let signer_id = SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: self.certificate.tbs_certificate.issuer.clone(),
            serial_number: self.certificate.tbs_certificate.serial_number.clone(),
        });
        let signer_info = SignerInfoBuilder::new(
            &self.signing_key,
            signer_id,
            digest_algorithm.clone(),
            &content,
            Some(digest.as_slice()),
        )
        .map_err(|error| failed(&error))?;
        let content_info: ContentInfo = SignedDataBuilder::new(&content)
            .add_digest_algorithm(digest_algorithm)
            .map_err(|error| failed(&error))?
            .add_certificate(CertificateChoices::Certificate(self.certificate.clone()))
            .map_err(|error| failed(&error))?
            .add_signer_info::<SigningKey<Sha256>, rsa::pkcs1v15::Signature>(signer_info)
            .map_err(|error| failed(&error))?
            .build()
            .map_err(|error| failed(&error))?;
        let pkcs7_der = content_info.to_der().map_err(|error| failed(&error))?;
        Ok(DocumentSignatures {
            signature: STANDARD.encode(signature),
            pkcs7: wrap_base64(&STANDARD.encode(pkcs7_der), 64),
        })
    }
}

fn wrap_base64(encoded: &str, width: usize) -> String {
    let mut wrapped = String::with_capacity(encoded.len() + encoded.len() / width + 1);
    for (index, chunk) in encoded.as_bytes().chunks(width).enumerate() {
        if index > 0 {
            wrapped.push('\n');
        }
        // base64 output is ASCII, so every chunk boundary is a char boundary.
        wrapped.push_str(&String::from_utf8_lossy(chunk));
    }
    wrapped
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs1v15::VerifyingKey;
    use rsa::signature::Verifier;

    /// Test-only key and self-signed certificate (generated with openssl, see testdata/).
    pub(crate) const TEST_KEY_PEM: &str = include_str!("../testdata/identity-key.pem");
    pub(crate) const TEST_CERT_PEM: &str = include_str!("../testdata/identity-cert.pem");

    pub(crate) fn test_signer() -> IdentitySigner {
        IdentitySigner::from_pem(TEST_KEY_PEM, TEST_CERT_PEM).expect("test key and cert")
    }

    #[test]
    fn signature_verifies_with_the_certificate_key() {
        let signer = test_signer();
        let document = br#"{"instanceId":"i-1"}"#;
        let signatures = signer.sign(document).expect("sign");
        let raw = STANDARD.decode(&signatures.signature).expect("base64");
        let signature = rsa::pkcs1v15::Signature::try_from(raw.as_slice()).expect("shape");
        let verifying_key =
            VerifyingKey::<Sha256>::new(signer.signing_key.as_ref().to_public_key());
        verifying_key
            .verify(document, &signature)
            .expect("signature verifies");
        assert!(verifying_key.verify(b"other", &signature).is_err());
        assert!(signatures.pkcs7.lines().all(|line| line.len() <= 64));
    }

    #[test]
    fn mismatched_certificate_is_refused() {
        let other_key = include_str!("../testdata/other-key.pem");
        let error = IdentitySigner::from_pem(other_key, TEST_CERT_PEM)
            .err()
            .expect("mismatch must fail");
        assert!(error.to_string().contains("not for this private key"));
    }
}
