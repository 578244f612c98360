//! TLS for what the collector sends and serves across the pod network: https:// pushes to
//! gateways (a CA bundle the gateways' certificates must chain to) and an HTTPS listener for
//! `/relay` and the rest of the collector's own endpoints. rustls with the ring provider, as the
//! Kubernetes client uses.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client side of https:// pushes.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient(server name {:?})", self.server_name)
    }
}

impl TlsClient {
    /// Trusts the certificates in `ca_pem` (and nothing else); `server_name`, if given, is
    /// checked on every connection instead of the URL's host.
    pub fn new(ca_pem: &[u8], server_name: Option<&str>) -> Result<TlsClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
            roots.add(cert).map_err(|e| format!("CA bundle: {e}"))?;
        }
        if roots.is_empty() {
            return Err("CA bundle: no certificate found".into());
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = match server_name {
            Some(n) => Some(ServerName::try_from(n.to_string()).map_err(|e| format!("server name {n:?}: {e}"))?),
            None => None,
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The connector and the name to check for a gateway at `host` (a DNS name or an IP).
    pub fn for_host(&self, host: &str) -> Result<(TlsConnector, ServerName<'static>), String> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_string()).map_err(|e| format!("server name {host:?}: {e}"))?,
        };
        Ok((self.connector.clone(), name))
    }
}

/// The acceptor of `--tls-listen`: the certificate chain and private key, both PEM.
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if certs.is_empty() {
        return Err("certificate: none found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
