//! TLS of the controller API (features `client`/`server`), with rustls and the `ring`
//! provider only (no OpenSSL):
//!
//! - the monitor serves a chain `[server certificate, CA]`;
//! - a client trusts exactly one CA: the one whose SHA-256 fingerprint the monitor URL
//!   carries (`https://host:port#sha256=HEX`). The chain and the host name are then
//!   verified against that CA as against any root (webpki); a certificate for another
//!   host name, or from another CA, is refused. There is no "accept any certificate".
//!
//! So one string, the URL that `pgha show uri` prints, is all an agent or an operator
//! needs: it names the monitor, pins its CA and (in its user info) carries a credential.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// The crypto provider of every TLS link pgha makes.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default provider, for HTTP clients built without a
/// configuration of ours (plain-HTTP endpoints). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Lowercase hex of SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint a URL pins: SHA-256 of the CA certificate's DER bytes.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    sha256_hex(cert.as_ref())
}

/// Certificates of a PEM text, in order.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// Splits `URL#sha256=HEX` into the URL and the pinned fingerprint.
pub fn split_pin(url: &str) -> Result<(String, Option<String>), String> {
    let Some((base, fragment)) = url.split_once('#') else {
        return Ok((url.to_string(), None));
    };
    let pin = fragment
        .strip_prefix("sha256=")
        .ok_or_else(|| format!("the URL's #{fragment} is not #sha256=<CA fingerprint>"))?
        .to_ascii_lowercase()
        .replace(':', "");
    if pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("#sha256= must be followed by the CA's 64-hex-digit fingerprint".into());
    }
    Ok((base.to_string(), Some(pin)))
}

/// Trusts one CA, found in the chain the server sends by its pinned fingerprint.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(pin: &str) -> Self {
        PinnedCaVerifier {
            pin: pin.to_ascii_lowercase(),
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `chain` (server certificate first) verifies for `hostname` against the CA in
/// it whose fingerprint is `pin`, as a client pinning it would check.
pub fn check_chain(
    chain: &[CertificateDer<'static>],
    pin: &str,
    hostname: &str,
) -> Result<(), String> {
    let name = ServerName::try_from(hostname.to_string()).map_err(|e| e.to_string())?;
    PinnedCaVerifier::new(pin)
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A client configuration that trusts only the CA `pin` names.
pub fn client_config(pin: &str) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pin)))
        .with_no_client_auth()
}

/// A server configuration from a PEM chain (server certificate first, then its CA) and
/// a PEM private key.
pub fn server_config(chain_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, String> {
    let chain = certs_from_pem(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("not a PEM private key: {e}"))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))
}

/// A CA and a server certificate signed by it, as PEM texts.
pub struct GeneratedPki {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// The server certificate followed by the CA's (the chain the monitor serves).
    pub server_chain_pem: String,
    pub server_key_pem: String,
    /// SHA-256 of the CA certificate (what URLs pin).
    pub ca_fingerprint: String,
}

/// A fresh CA for the monitor `hostname` and a server certificate for that name (an IP
/// address becomes an IP SAN), both valid for ten years.
pub fn generate_pki(hostname: &str) -> Result<GeneratedPki, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| e.to_string();
    let ten_years = |p: &mut CertificateParams| {
        p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        p.not_after = p.not_before + std::time::Duration::from_secs(10 * 366 * 86_400);
    };
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("pgha monitor CA ({hostname})"));
    ca.distinguished_name = dn;
    ten_years(&mut ca);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let (server_cert_pem, server_key_pem) = server_certificate(&issuer, hostname)?;
    Ok(GeneratedPki {
        ca_fingerprint: fingerprint(ca_cert.der()),
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        server_chain_pem: format!("{server_cert_pem}{}", ca_cert.pem()),
        server_key_pem,
    })
}

/// A server certificate for `hostname` signed by `issuer`: (certificate PEM, key PEM).
fn server_certificate<K: rcgen::SigningKey>(
    issuer: &rcgen::Issuer<'_, K>,
    hostname: &str,
) -> Result<(String, String), String> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| e.to_string();
    let key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(vec![hostname.to_string()]).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hostname.to_string());
    server.distinguished_name = dn;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = rcgen::date_time_ymd(2025, 1, 1);
    server.not_after = server.not_before + std::time::Duration::from_secs(10 * 366 * 86_400);
    let cert = server.signed_by(&key, issuer).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A server certificate for another controller of the same group, signed by the
/// group's existing CA (so the URL's one pin covers every controller): (the chain to
/// serve, its key), as PEM.
pub fn issue_server_certificate(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    hostname: &str,
) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|e| format!("the CA key: {e}"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert_pem, key)
        .map_err(|e| format!("the CA certificate: {e}"))?;
    let (cert, key) = server_certificate(&issuer, hostname)?;
    Ok((format!("{cert}{ca_cert_pem}"), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_parsed_strictly() {
        let hex = "ab".repeat(32);
        assert_eq!(
            split_pin(&format!("https://h:1#sha256={hex}")).unwrap(),
            ("https://h:1".into(), Some(hex.clone()))
        );
        assert_eq!(
            split_pin("https://h:1").unwrap(),
            ("https://h:1".into(), None)
        );
        assert!(split_pin("https://h:1#sha256=abc").is_err());
        assert!(split_pin("https://h:1#md5=00").is_err());
    }

    #[test]
    fn a_generated_pki_makes_a_server_identity_and_its_pin() {
        let pki = generate_pki("monitor.example").unwrap();
        server_config(
            pki.server_chain_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
        )
        .unwrap();
        let chain = certs_from_pem(pki.server_chain_pem.as_bytes()).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(fingerprint(&chain[1]), pki.ca_fingerprint);
        let ca = certs_from_pem(pki.ca_cert_pem.as_bytes()).unwrap();
        assert_eq!(fingerprint(&ca[0]), pki.ca_fingerprint);
    }

    /// A second controller's certificate, issued from the first one's CA, is trusted by
    /// the same pin.
    #[test]
    fn a_certificate_issued_from_an_existing_ca_verifies_under_its_pin() {
        let pki = generate_pki("m1.example").unwrap();
        let (chain, key) =
            issue_server_certificate(&pki.ca_cert_pem, &pki.ca_key_pem, "m2.example").unwrap();
        server_config(chain.as_bytes(), key.as_bytes()).unwrap();
        let chain = certs_from_pem(chain.as_bytes()).unwrap();
        let name = ServerName::try_from("m2.example".to_string()).unwrap();
        PinnedCaVerifier::new(&pki.ca_fingerprint)
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .unwrap();
    }

    /// The verifier accepts the pinned CA's certificate for the right name only.
    #[test]
    fn the_verifier_trusts_the_pinned_ca_for_the_right_name_only() {
        let pki = generate_pki("monitor.example").unwrap();
        let other = generate_pki("monitor.example").unwrap();
        let chain = certs_from_pem(pki.server_chain_pem.as_bytes()).unwrap();
        let now = UnixTime::now();
        let name = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        let v = PinnedCaVerifier::new(&pki.ca_fingerprint);
        assert!(
            v.verify_server_cert(&chain[0], &chain[1..], &name("monitor.example"), &[], now)
                .is_ok()
        );
        assert!(
            v.verify_server_cert(&chain[0], &chain[1..], &name("other.example"), &[], now)
                .is_err(),
            "a certificate for another host name"
        );
        let untrusting = PinnedCaVerifier::new(&other.ca_fingerprint);
        assert!(
            untrusting
                .verify_server_cert(&chain[0], &chain[1..], &name("monitor.example"), &[], now)
                .is_err(),
            "a CA the URL does not pin"
        );
        // A chain that carries the pinned CA but a server certificate another CA signed.
        let forged = certs_from_pem(other.server_chain_pem.as_bytes()).unwrap();
        assert!(
            v.verify_server_cert(&forged[0], &chain[1..], &name("monitor.example"), &[], now)
                .is_err(),
            "a server certificate the pinned CA did not sign"
        );
    }
}
