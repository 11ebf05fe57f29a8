//! Certificates for a TLS etcd: a CA, a server certificate for loopback, a
//! client certificate, and a client certificate from another CA (one etcd
//! must refuse). Generated with rcgen into PEM files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A CA certificate and a client certificate with its key, as PEM files.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// The CA that signed `cert`.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Every file a TLS etcd test needs.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA etcd trusts, and a client certificate it signed.
    pub client: ClientFiles,
    /// etcd's server certificate (SANs `127.0.0.1`, `localhost`).
    pub server_cert: PathBuf,
    /// Its private key.
    pub server_key: PathBuf,
    /// Another CA, and a client certificate it signed: etcd does not trust
    /// them.
    pub foreign: ClientFiles,
}

impl Pki {
    /// Generates the certificates into `dir`.
    ///
    /// Fails when a certificate cannot be made or written.
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let write = |name: &str, pem: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let ca = new_ca("lifeboat test etcd CA")?;
        let foreign_ca = new_ca("some other CA")?;

        let mut server = leaf("etcd server", &[ExtendedKeyUsagePurpose::ServerAuth])?;
        server.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into()?),
        ];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let client = |issuer: &CertifiedIssuer<'static, KeyPair>| -> Result<(String, String)> {
            let params = leaf("lifeboat", &[ExtendedKeyUsagePurpose::ClientAuth])?;
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (client_cert, client_key) = client(&ca)?;
        let (foreign_cert, foreign_key) = client(&foreign_ca)?;

        Ok(Self {
            client: ClientFiles {
                ca: write("ca.crt", &ca.pem())?,
                cert: write("client.crt", &client_cert)?,
                key: write("client.key", &client_key)?,
            },
            server_cert: write("server.crt", &server_cert.pem())?,
            server_key: write("server.key", &server_key.serialize_pem())?,
            foreign: ClientFiles {
                ca: write("foreign-ca.crt", &foreign_ca.pem())?,
                cert: write("foreign-client.crt", &foreign_cert)?,
                key: write("foreign-client.key", &foreign_key)?,
            },
        })
    }
}

fn new_ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf(name: &str, usages: &[ExtendedKeyUsagePurpose]) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    Ok(params)
}
