//! TLS for the PostgreSQL room: the broker's server certificate (from
//! `server.tls_cert_file`/`tls_key_file`, or generated self-signed into
//! the keys directory on first start), and client configurations for
//! upstream databases per `tls` mode.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{Config, PostgresTarget, TlsMode};

/// The generated certificate's files under the keys directory.
pub const GENERATED_CERT: &str = "postgres-tls.crt";
pub const GENERATED_KEY: &str = "postgres-tls.key";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's TLS configuration. Without configured files, a
/// self-signed certificate for the public host names is generated once
/// into the keys directory (mode 0600) and reused.
pub fn server_config(
    config: &Config,
    public_host: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (cert_path, key_path) = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (None, None) => {
            let dir = config.keys_dir();
            let cert = dir.join(GENERATED_CERT);
            let key = dir.join(GENERATED_KEY);
            if !cert.exists() || !key.exists() {
                generate(&cert, &key, config, public_host)?;
                tracing::info!(cert = %cert.display(), "generated a self-signed certificate for the PostgreSQL listener");
            }
            (cert, key)
        }
        _ => anyhow::bail!("server.tls_cert_file and server.tls_key_file go together"),
    };
    let certs = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("loading {}", cert_path.display()))?;
    server.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(server))
}

fn generate(cert: &Path, key: &Path, config: &Config, public_host: &str) -> anyhow::Result<()> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for host in [
        Some(public_host.to_owned()),
        config.server.public_url.host_str().map(str::to_owned),
    ]
    .into_iter()
    .flatten()
    {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !host.is_empty() && !names.contains(&host) {
            names.push(host);
        }
    }
    let generated =
        rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
    crate::keys::create_private_dir(&config.keys_dir())?;
    crate::keys::write_private_file(key, generated.signing_key.serialize_pem().as_bytes())?;
    crate::keys::write_private_file(cert, generated.cert.pem().as_bytes())?;
    Ok(())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Err(pem::Error::NoItemsFound) => anyhow::bail!("{}: no private key", path.display()),
        found => found.with_context(|| format!("parsing {}", path.display())),
    }
}

/// The client configuration for a target's `tls` mode (`None` for
/// `disable`). `verify-full` checks chain and name, `verify-ca` the chain
/// only, `require` encrypts without checking (as libpq does).
pub fn client_config(target: &PostgresTarget) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    client_config_with(target.tls, target.ca_file.as_deref())
}

/// The client configuration for `mode`, trusting `ca_file` (else the
/// public web PKI roots).
pub fn client_config_with(
    mode: TlsMode,
    ca_file: Option<&Path>,
) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    if mode == TlsMode::Disable {
        return Ok(None);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        TlsMode::Require => Arc::new(NoVerify(provider())),
        _ => {
            let mut roots = RootCertStore::empty();
            match ca_file {
                Some(path) => {
                    for cert in read_certs(path)? {
                        roots.add(cert).with_context(|| {
                            format!("{}: unusable CA certificate", path.display())
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .context("building the certificate verifier")?;
            if mode == TlsMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// The name the upstream certificate must carry: the host of `address`.
pub fn server_name(address: &str) -> anyhow::Result<ServerName<'static>> {
    let host = host_of(address);
    ServerName::try_from(host.to_owned()).with_context(|| format!("invalid host name {host:?}"))
}

/// `host` of `host:port` (IPv6 in brackets).
pub fn host_of(address: &str) -> &str {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => address,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `require`: encrypt, verify the handshake signature, trust any certificate.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("db.example:5432"), "db.example");
        assert_eq!(host_of("127.0.0.1:5432"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5432"), "::1");
        assert!(matches!(
            server_name("127.0.0.1:1").unwrap(),
            ServerName::IpAddress(_)
        ));
    }
}
