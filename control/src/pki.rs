//! The control plane's certificates and the kubeconfigs that trust them.
//!
//! At first start a CA (valid 10 years) is generated into
//! `<data-dir>/pki/`; a serving certificate signed by it (valid one year) is
//! made at every start for the configured names and addresses, so changing
//! them needs no manual step, and again while serving once two thirds of
//! its lifetime have passed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Generating or parsing a certificate or key failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// rustls refused the certificate.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// How long the CA is valid (kubeadm's: 10 years).
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long a serving certificate is valid (kubeadm's: one year). One is
/// issued at every start, and again while serving once two thirds of its
/// lifetime have passed.
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far back a certificate's validity starts, for clients whose clock is
/// a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The CA (its certificate, PEM) and the serving certificate, renewed
/// before it expires.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate, PEM: what clients trust.
    pub ca_pem: String,
    serving: Arc<ServingCert>,
}

impl Pki {
    /// Loads the CA from `dir` (creating it at first start) and issues a
    /// serving certificate for `names` (DNS names or IP addresses).
    pub fn ensure(dir: &Path, names: &[String]) -> Result<Self, PkiError> {
        Self::ensure_with(dir, names, SERVING_LIFETIME)
    }

    fn ensure_with(dir: &Path, names: &[String], lifetime: Duration) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let ca_cert_path = dir.join("ca.crt");
        let ca_key_path = dir.join("ca.key");
        let (ca_pem, ca_key) = if ca_cert_path.exists() && ca_key_path.exists() {
            let pem = read(&ca_cert_path)?;
            let key = KeyPair::from_pem(&read(&ca_key_path)?)?;
            (pem, key)
        } else {
            let key = KeyPair::generate()?;
            let mut params = ca_params()?;
            set_validity(&mut params, CA_LIFETIME);
            let cert = params.self_signed(&key)?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            write_private(&ca_cert_path, &cert.pem())?;
            tracing::info!(dir = %dir.display(), "generated the cluster CA");
            (cert.pem(), key)
        };
        // The issuer is rebuilt from the same parameters and key as the CA
        // certificate: same subject, same key identifier.
        let issuer = Issuer::new(ca_params()?, ca_key);
        let serving = ServingCert::issue(issuer, names.to_vec(), dir.join("server.crt"), lifetime)?;
        Ok(Pki {
            ca_pem,
            serving: Arc::new(serving),
        })
    }

    /// A rustls server configuration serving the certificate (HTTP/1.1 and
    /// HTTP/2 by ALPN), renewed while the server runs.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.serving) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The serving certificate: issued by the CA for the server's names, and
/// issued again on the first handshake after its renewal time.
struct ServingCert {
    issuer: Issuer<'static, KeyPair>,
    names: Vec<String>,
    /// Where the current certificate is written, for operators to read.
    path: PathBuf,
    lifetime: Duration,
    current: RwLock<(Arc<CertifiedKey>, Instant)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("names", &self.names)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    fn issue(
        issuer: Issuer<'static, KeyPair>,
        names: Vec<String>,
        path: PathBuf,
        lifetime: Duration,
    ) -> Result<Self, PkiError> {
        let first = make_serving_cert(&issuer, &names, &path, lifetime)?;
        Ok(ServingCert {
            issuer,
            names,
            path,
            lifetime,
            current: RwLock::new((first, Instant::now() + lifetime * 2 / 3)),
        })
    }

    /// The certificate to serve, renewed first if its time has come (a
    /// failed renewal keeps the current one and is retried next time).
    fn current(&self) -> Arc<CertifiedKey> {
        let (cert, renew_at) = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if Instant::now() < renew_at {
            return cert;
        }
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        if Instant::now() < slot.1 {
            return Arc::clone(&slot.0);
        }
        match make_serving_cert(&self.issuer, &self.names, &self.path, self.lifetime) {
            Ok(fresh) => {
                tracing::info!(path = %self.path.display(), "renewed the serving certificate");
                *slot = (fresh, Instant::now() + self.lifetime * 2 / 3);
            }
            Err(e) => tracing::error!(error = %e, "cannot renew the serving certificate"),
        }
        Arc::clone(&slot.0)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Issues a serving certificate for `names`, valid for `lifetime`, and
/// writes it (PEM) to `path`.
fn make_serving_cert(
    issuer: &Issuer<'static, KeyPair>,
    names: &[String],
    path: &Path,
    lifetime: Duration,
) -> Result<Arc<CertifiedKey>, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "berth-control");
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, lifetime);
    let cert = params.signed_by(&key, issuer)?;
    write_private(path, &cert.pem())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Makes `params` valid from a little before now for `lifetime`.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let midnight = rcgen::date_time_ymd(
        i32::from(now.year()),
        u8::try_from(now.month()).unwrap_or(1),
        u8::try_from(now.day()).unwrap_or(1),
    );
    let since_midnight = Duration::from_secs(
        u64::try_from(
            i32::from(now.hour()) * 3600 + i32::from(now.minute()) * 60 + i32::from(now.second()),
        )
        .unwrap_or(0),
    );
    let start = midnight + since_midnight;
    params.not_before = start - CLOCK_SKEW;
    params.not_after = start + lifetime;
}

/// The CA's certificate parameters (also its identity as an issuer).
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "berth-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A kubeconfig for `user` with bearer `token`, trusting `ca_pem`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: berth
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {user}@berth
  context:
    cluster: berth
    user: {user}
current-context: {user}@berth
"
    )
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file readable by its owner only (keys, tokens, kubeconfigs).
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let first = Pki::ensure(dir.path(), &names).unwrap();
        let second = Pki::ensure(dir.path(), &names).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert!(first.server_config().is_ok());
        let kc = kubeconfig("https://127.0.0.1:6443", &first.ca_pem, "admin", "tok");
        assert!(kc.contains("token: tok") && kc.contains("certificate-authority-data: "));
    }

    /// The years of a certificate's notBefore and notAfter: the first two
    /// times (UTCTime, or GeneralizedTime past 2049) in its DER encoding.
    fn validity_years(der: &[u8]) -> (i32, i32) {
        let mut years = Vec::new();
        let mut i = 0;
        while i + 2 < der.len() && years.len() < 2 {
            let digits = |from: usize, n: usize| -> Option<i32> {
                std::str::from_utf8(der.get(from..from + n)?)
                    .ok()?
                    .parse()
                    .ok()
            };
            match (der[i], der[i + 1]) {
                (0x17, 13) => {
                    let yy = digits(i + 2, 2).expect("UTCTime");
                    years.push(if yy < 50 { 2000 + yy } else { 1900 + yy });
                    i += 15;
                }
                (0x18, 15) => {
                    years.push(digits(i + 2, 4).expect("GeneralizedTime"));
                    i += 17;
                }
                _ => i += 1,
            }
        }
        (years[0], years[1])
    }

    fn pem_der(path: &Path) -> Vec<u8> {
        let pem = std::fs::read_to_string(path).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn certificates_are_valid_from_now_for_a_bounded_time() {
        let dir = tempfile::tempdir().unwrap();
        Pki::ensure(dir.path(), &["127.0.0.1".to_string()]).unwrap();
        let year = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .year();
        let (ca_from, ca_to) = validity_years(&pem_der(&dir.path().join("ca.crt")));
        assert_eq!(ca_from, i32::from(year));
        assert!((9..=10).contains(&(ca_to - ca_from)), "{ca_from}-{ca_to}");
        let (from, to) = validity_years(&pem_der(&dir.path().join("server.crt")));
        assert_eq!(from, i32::from(year));
        assert!((0..=1).contains(&(to - from)), "{from}-{to}");
    }

    #[test]
    fn the_serving_certificate_is_renewed_after_two_thirds_of_its_life() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["127.0.0.1".to_string()];
        let pki = Pki::ensure_with(dir.path(), &names, Duration::from_millis(600)).unwrap();
        let first = pki.serving.current();
        assert!(
            Arc::ptr_eq(&first, &pki.serving.current()),
            "renewed too early"
        );
        std::thread::sleep(Duration::from_millis(450));
        let second = pki.serving.current();
        assert!(!Arc::ptr_eq(&first, &second), "not renewed");
        assert_ne!(first.cert[0], second.cert[0]);
    }
}
