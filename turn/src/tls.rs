//! TLS for `turns:` clients (TURN over TLS over TCP): the configured certificate and key, or a
//! self-signed certificate made at start for development.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{crypto, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A TLS setup failure, with what to fix.
#[derive(Debug, thiserror::Error)]
#[error("TURN TLS: {0}")]
pub struct TlsError(String);

/// The acceptor for `cert`/`key` PEM files; both empty: a self-signed certificate for `names`.
/// Returns whether the certificate was generated.
pub fn acceptor(
    cert: &str,
    key: &str,
    names: Vec<String>,
) -> Result<(TlsAcceptor, bool), TlsError> {
    let generated = cert.is_empty() && key.is_empty();
    let (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) = if generated {
        let c = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError(format!("generating a certificate: {e}")))?;
        (
            vec![c.cert.der().clone()],
            PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()).into(),
        )
    } else {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError(format!("turn.tls_cert {cert:?}: {e}")))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError(format!("turn.tls_key {key:?}: {e}")))?;
        (chain, key)
    };
    let config = ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(format!("certificate and key: {e}")))?;
    Ok((TlsAcceptor::from(Arc::new(config)), generated))
}
