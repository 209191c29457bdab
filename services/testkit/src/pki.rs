//! Certificates for TLS tests: a CA, a server certificate for 127.0.0.1 and
//! localhost, and a client certificate, written as PEM files into a
//! directory of their own.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A CA and the files of the certificates it signed.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// A new CA named `name` and its certificates, in a fresh directory.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("tributary-pki-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let pki = Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir,
        };
        pki.issue(name)?;
        Ok(pki)
    }

    /// Writes a new CA and new certificates over the files (a rotation).
    pub fn issue(&self, name: &str) -> anyhow::Result<()> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate()?;
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        server
            .distinguished_name
            .push(DnType::CommonName, format!("{name} server"));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer)?;
        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, format!("{name} client"));
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer)?;
        write(&self.ca, &ca_cert.pem())?;
        // Key before certificate, as a rotation tool may: the server must
        // keep the old pair until both match.
        write(&self.server_key, &server_key.serialize_pem())?;
        write(&self.server_cert, &server_cert.pem())?;
        write(&self.client_key, &client_key.serialize_pem())?;
        write(&self.client_cert, &client_cert.pem())?;
        Ok(())
    }
}

/// Replaces a file in one step (write aside, rename), as Kubernetes does.
fn write(path: &Path, content: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
