//! Who is calling: client-certificate identities and bearer tokens mapped to configured
//! agent devices. Pure code: no I/O, no clock.
//!
//! Invariants:
//! * A certificate designates a device only if exactly one configured mTLS device's
//!   `identity` equals the certificate's subject CN, one of its `dNSName` SANs (ASCII case
//!   ignored) or one of its URI SANs. The certificate's chain has already been verified
//!   against the device CA by rustls; this module only reads names.
//! * Tokens are kept as SHA-256 digests only. A presented token is hashed and compared
//!   with every token device's digest in constant time, without stopping at a match, so
//!   the time taken tells nothing about which device's token came close.
//! * An mTLS device has no token digest and a token device has no certificate identity,
//!   so neither can authenticate with the other's method.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::config::{AgentAuth, AgentDevice, ConfigProblem};

/// The names a client certificate carries that can designate a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// Subject common names (normally one).
    pub common_names: Vec<String>,
    /// subjectAltName `dNSName` entries.
    pub dns_names: Vec<String>,
    /// subjectAltName `uniformResourceIdentifier` entries.
    pub uris: Vec<String>,
}

impl CertificateNames {
    /// Every name, for messages to operators.
    #[must_use]
    pub fn all(&self) -> Vec<&str> {
        self.common_names
            .iter()
            .chain(&self.dns_names)
            .chain(&self.uris)
            .map(String::as_str)
            .collect()
    }
}

const OID_COMMON_NAME: &[u64] = &[2, 5, 4, 3];
const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];

/// Reads the subject CN(s) and the DNS and URI subjectAltNames of a DER X.509 certificate.
///
/// ```text
/// TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
///     validity, subject Name, subjectPublicKeyInfo, [1] issuerUniqueID OPTIONAL,
///     [2] subjectUniqueID OPTIONAL, [3] extensions OPTIONAL }
/// Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
/// GeneralName ::= CHOICE { ..., [2] dNSName IA5String, ..., [6] uniformResourceIdentifier IA5String, ... }
/// ```
///
/// CN values in UTF8String, PrintableString, IA5String or BMPString are read; other string
/// types are skipped (they cannot match a configured identity).
///
/// # Errors
/// A description of what is malformed.
pub fn certificate_names(der: &[u8]) -> Result<CertificateNames, String> {
    use yasna::Tag;

    let mut names = CertificateNames::default();
    let mut trailing: Vec<Vec<u8>> = Vec::new();
    yasna::parse_der(der, |reader| {
        reader.read_sequence(|certificate| {
            certificate.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                tbs.next().read_der()?; // serialNumber
                tbs.next().read_der()?; // signature algorithm
                tbs.next().read_der()?; // issuer
                tbs.next().read_der()?; // validity
                tbs.next().read_sequence_of(|rdn| {
                    rdn.read_set_of(|attribute| {
                        attribute.read_sequence(|atv| {
                            let oid = atv.next().read_oid()?;
                            let value = atv.next().read_tagged_der()?;
                            if oid.components().as_slice() == OID_COMMON_NAME {
                                if let Some(cn) = directory_string(&value) {
                                    names.common_names.push(cn);
                                }
                            }
                            Ok(())
                        })
                    })
                })?;
                tbs.next().read_der()?; // subjectPublicKeyInfo
                while let Some(element) = tbs.read_optional(|r| r.read_der())? {
                    trailing.push(element);
                }
                Ok(())
            })?;
            certificate.next().read_der()?; // signatureAlgorithm
            certificate.next().read_der()?; // signatureValue
            Ok(())
        })
    })
    .map_err(|e| format!("not a DER X.509 certificate ({e})"))?;

    for element in &trailing {
        // Only the [3] element holds extensions; [1]/[2] unique ids fail this parse.
        let Ok(extensions) = yasna::parse_der(element, |r| {
            r.read_tagged(Tag::context(3), |r| {
                let mut found = Vec::new();
                r.read_sequence_of(|extension| {
                    extension.read_sequence(|e| {
                        let oid = e.next().read_oid()?;
                        e.read_optional(|r| r.read_bool())?; // critical
                        let value = e.next().read_bytes()?;
                        found.push((oid, value));
                        Ok(())
                    })
                })?;
                Ok(found)
            })
        }) else {
            continue;
        };
        for (oid, value) in extensions {
            if oid.components().as_slice() != OID_SUBJECT_ALT_NAME {
                continue;
            }
            yasna::parse_der(&value, |r| {
                r.read_sequence_of(|general_name| {
                    let name = general_name.read_tagged_der()?;
                    let tag = name.tag();
                    if tag.tag_class == yasna::TagClass::ContextSpecific {
                        let text = String::from_utf8(name.value().to_vec()).ok();
                        match (tag.tag_number, text) {
                            (2, Some(dns)) => names.dns_names.push(dns),
                            (6, Some(uri)) => names.uris.push(uri),
                            _ => {}
                        }
                    }
                    Ok(())
                })
            })
            .map_err(|e| format!("malformed subjectAltName extension ({e})"))?;
        }
    }
    Ok(names)
}

fn directory_string(value: &yasna::models::TaggedDerValue) -> Option<String> {
    let tag = value.tag();
    if tag.tag_class != yasna::TagClass::Universal {
        return None;
    }
    match tag.tag_number {
        // UTF8String, PrintableString, IA5String
        12 | 19 | 22 => String::from_utf8(value.value().to_vec()).ok(),
        // BMPString (UTF-16BE)
        30 => {
            let bytes = value.value();
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// A SHA-256 digest of a bearer token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Even a digest helps an offline guesser; keep it out of logs.
        f.write_str("TokenDigest(..)")
    }
}

impl TokenDigest {
    /// The digest of `token`.
    #[must_use]
    pub fn of(token: &[u8]) -> Self {
        TokenDigest(Sha256::digest(token).into())
    }

    /// Constant-time equality: the time taken does not depend on where the digests differ.
    #[must_use]
    pub fn ct_eq(&self, other: &TokenDigest) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

/// Shortest accepted token, in characters.
pub const MIN_TOKEN_LEN: usize = 32;
/// Longest accepted token, in characters.
pub const MAX_TOKEN_LEN: usize = 512;

/// Extracts the token from a token file's contents: surrounding whitespace (a trailing
/// newline) is ignored; the rest must be 32–512 visible ASCII characters, so it fits an
/// HTTP header unescaped and is long enough not to be guessed.
///
/// # Errors
/// Why the contents are not a usable token (never the contents themselves).
pub fn parse_token_file(contents: &[u8]) -> Result<&[u8], String> {
    let token = contents.trim_ascii();
    if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "the token must be {MIN_TOKEN_LEN}–{MAX_TOKEN_LEN} characters (found {}); generate one with `openssl rand -hex 32`",
            token.len()
        ));
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err("the token must be visible ASCII characters only (no spaces)".into());
    }
    Ok(token)
}

/// How a caller was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Client certificate.
    Mtls,
    /// Bearer token.
    Token,
}

impl AuthMethod {
    /// `mtls` or `token`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            AuthMethod::Mtls => "mtls",
            AuthMethod::Token => "token",
        }
    }
}

/// What a connection's client certificate says about the caller, decided once per
/// connection after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateMatch {
    /// No client certificate was presented.
    Absent,
    /// The certificate designates this configured device.
    Device(Arc<str>),
    /// A valid certificate that designates no configured device.
    Unregistered,
    /// A valid certificate that designates several devices (names listed).
    Ambiguous(Vec<Arc<str>>),
    /// The certificate could not be read (reason).
    Unreadable(String),
}

/// The device directory in use, replaced as a whole when the configuration is reloaded
/// ([`super::AgentApiRuntime::reload_devices`]). Token checks read the current one on
/// every request; a certificate is matched once per connection, so a keep-alive
/// connection keeps the identity it was matched to until it closes (the idle timeout
/// bounds that).
#[derive(Debug)]
pub struct DirectoryCell(std::sync::RwLock<Arc<DeviceDirectory>>);

impl DirectoryCell {
    /// A cell holding `directory`.
    #[must_use]
    pub fn new(directory: DeviceDirectory) -> Self {
        DirectoryCell(std::sync::RwLock::new(Arc::new(directory)))
    }

    /// The directory in use now.
    #[must_use]
    pub fn current(&self) -> Arc<DeviceDirectory> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts `directory` in use.
    pub fn replace(&self, directory: DeviceDirectory) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(directory);
    }
}

/// The configured agent devices, indexed by credential.
#[derive(Debug, Default)]
pub struct DeviceDirectory {
    by_identity: Vec<(String, Arc<str>)>,
    by_token: Vec<(TokenDigest, Arc<str>)>,
}

impl DeviceDirectory {
    /// Builds the directory from devices and the digests of the token devices' tokens
    /// (read by the caller; `token_digests` is looked up by device id).
    ///
    /// # Errors
    /// A token device without a digest, or two devices sharing one token (either could
    /// then speak for the other), keyed `<device id>.token_file`.
    pub fn new(
        devices: &[AgentDevice],
        token_digests: &[(String, TokenDigest)],
    ) -> Result<Self, ConfigProblem> {
        let mut directory = DeviceDirectory::default();
        for device in devices {
            let id: Arc<str> = Arc::from(device.id.as_str());
            match &device.auth {
                AgentAuth::Mtls { identity } => {
                    directory.by_identity.push((identity.clone(), id));
                }
                AgentAuth::Token { .. } => {
                    let digest = token_digests
                        .iter()
                        .find(|(device_id, _)| *device_id == device.id)
                        .map(|(_, digest)| *digest)
                        .ok_or_else(|| {
                            ConfigProblem::new(
                                format!("{}.token_file", device.id),
                                "no token loaded",
                            )
                        })?;
                    if let Some((_, other)) = directory
                        .by_token
                        .iter()
                        .find(|(known, _)| known.ct_eq(&digest))
                    {
                        return Err(ConfigProblem::new(
                            format!("{}.token_file", device.id),
                            format!(
                                "same token as device `{other}`; every device needs its own token"
                            ),
                        ));
                    }
                    directory.by_token.push((digest, id));
                }
            }
        }
        Ok(directory)
    }

    /// Whether any device authenticates with a certificate.
    #[must_use]
    pub fn has_mtls_devices(&self) -> bool {
        !self.by_identity.is_empty()
    }

    /// Whether any device authenticates with a token.
    #[must_use]
    pub fn has_token_devices(&self) -> bool {
        !self.by_token.is_empty()
    }

    /// Maps a verified client certificate (DER) to a device.
    #[must_use]
    pub fn match_certificate(&self, der: &[u8]) -> (CertificateMatch, CertificateNames) {
        let names = match certificate_names(der) {
            Ok(names) => names,
            Err(reason) => {
                return (
                    CertificateMatch::Unreadable(reason),
                    CertificateNames::default(),
                )
            }
        };
        let mut matched: Vec<Arc<str>> = Vec::new();
        for (identity, device) in &self.by_identity {
            let hit = names.common_names.iter().any(|cn| cn == identity)
                || names
                    .dns_names
                    .iter()
                    .any(|dns| dns.eq_ignore_ascii_case(identity))
                || names.uris.iter().any(|uri| uri == identity);
            if hit && !matched.contains(device) {
                matched.push(Arc::clone(device));
            }
        }
        let result = match matched.len() {
            0 => CertificateMatch::Unregistered,
            1 => CertificateMatch::Device(matched.swap_remove(0)),
            _ => CertificateMatch::Ambiguous(matched),
        };
        (result, names)
    }

    /// The device whose token is `token`, comparing against every token device.
    #[must_use]
    pub fn match_token(&self, token: &[u8]) -> Option<Arc<str>> {
        let presented = TokenDigest::of(token);
        let mut found = None;
        for (digest, device) in &self.by_token {
            // No early exit: every digest is compared whatever the outcome.
            if digest.ct_eq(&presented) {
                found = Some(Arc::clone(device));
            }
        }
        found
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // rcgen's default subject has a CN of its own.
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wardgate tests");
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_are_read_from_subject_and_san() {
        let der = cert(
            Some("carto-1"),
            vec![
                SanType::DnsName("carto-1.cathlab.example".try_into().unwrap()),
                SanType::URI("urn:device:carto-1".try_into().unwrap()),
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            ],
        );
        let names = certificate_names(&der).unwrap();
        assert_eq!(names.common_names, vec!["carto-1"]);
        assert_eq!(names.dns_names, vec!["carto-1.cathlab.example"]);
        assert_eq!(names.uris, vec!["urn:device:carto-1"]);

        let no_cn = certificate_names(&cert(None, vec![])).unwrap();
        assert_eq!(no_cn, CertificateNames::default());
    }

    #[test]
    fn garbage_is_unreadable_not_a_panic() {
        assert!(certificate_names(&[]).is_err());
        assert!(certificate_names(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
        assert!(certificate_names(&[0xff; 40]).is_err());
        let mut der = cert(Some("x"), vec![]);
        der.truncate(der.len() / 2);
        assert!(certificate_names(&der).is_err());
    }

    fn directory() -> DeviceDirectory {
        let devices = vec![
            AgentDevice {
                id: "by-cn".into(),
                auth: AgentAuth::Mtls {
                    identity: "carto-1".into(),
                },
            },
            AgentDevice {
                id: "by-dns".into(),
                auth: AgentAuth::Mtls {
                    identity: "Pump-7.ward.example".into(),
                },
            },
            AgentDevice {
                id: "by-uri".into(),
                auth: AgentAuth::Mtls {
                    identity: "urn:device:xray-2".into(),
                },
            },
            AgentDevice {
                id: "token-dev".into(),
                auth: AgentAuth::Token {
                    token_file: "/t".into(),
                },
            },
        ];
        DeviceDirectory::new(
            &devices,
            &[("token-dev".into(), TokenDigest::of(b"s3cret-token"))],
        )
        .unwrap()
    }

    #[test]
    fn certificates_map_to_exactly_one_device() {
        let dir = directory();
        let by_cn = dir.match_certificate(&cert(Some("carto-1"), vec![])).0;
        assert_eq!(by_cn, CertificateMatch::Device("by-cn".into()));
        let by_dns = dir
            .match_certificate(&cert(
                Some("something else"),
                vec![SanType::DnsName("pump-7.WARD.example".try_into().unwrap())],
            ))
            .0;
        assert_eq!(by_dns, CertificateMatch::Device("by-dns".into()));
        let by_uri = dir
            .match_certificate(&cert(
                None,
                vec![SanType::URI("urn:device:xray-2".try_into().unwrap())],
            ))
            .0;
        assert_eq!(by_uri, CertificateMatch::Device("by-uri".into()));
        // URIs and CNs are exact.
        let wrong_case = dir.match_certificate(&cert(Some("CARTO-1"), vec![])).0;
        assert_eq!(wrong_case, CertificateMatch::Unregistered);
        let (unknown, names) = dir.match_certificate(&cert(Some("stranger"), vec![]));
        assert_eq!(unknown, CertificateMatch::Unregistered);
        assert_eq!(names.all(), vec!["stranger"]);
        let both = dir
            .match_certificate(&cert(
                Some("carto-1"),
                vec![SanType::URI("urn:device:xray-2".try_into().unwrap())],
            ))
            .0;
        assert!(matches!(both, CertificateMatch::Ambiguous(d) if d.len() == 2));
        assert!(matches!(
            dir.match_certificate(b"nope").0,
            CertificateMatch::Unreadable(_)
        ));
    }

    #[test]
    fn tokens_match_only_their_device() {
        let dir = directory();
        assert_eq!(
            dir.match_token(b"s3cret-token").as_deref(),
            Some("token-dev")
        );
        assert_eq!(dir.match_token(b"s3cret-tokeN"), None);
        assert_eq!(dir.match_token(b""), None);
        // An mTLS device's identity is not a token.
        assert_eq!(dir.match_token(b"carto-1"), None);
        assert!(dir.has_mtls_devices() && dir.has_token_devices());
    }

    #[test]
    fn shared_tokens_are_refused() {
        let token = |id: &str| AgentDevice {
            id: id.into(),
            auth: AgentAuth::Token {
                token_file: "/t".into(),
            },
        };
        let digest = TokenDigest::of(b"same");
        let err = DeviceDirectory::new(
            &[token("a"), token("b")],
            &[("a".into(), digest), ("b".into(), digest)],
        )
        .unwrap_err();
        assert_eq!(err.key, "b.token_file");
        assert!(err.reason.contains("same token as device `a`"), "{err}");
        assert!(DeviceDirectory::new(&[token("a")], &[]).is_err());
    }

    #[test]
    fn token_files_are_checked_without_echoing_them() {
        let good = "0123456789abcdef0123456789abcdef\n";
        assert_eq!(
            parse_token_file(good.as_bytes()).unwrap(),
            good.trim().as_bytes()
        );
        let short = parse_token_file(b"hunter2\n").unwrap_err();
        assert!(!short.contains("hunter2"), "{short}");
        assert!(short.contains("found 7"), "{short}");
        let spaced = parse_token_file(b"0123456789abcdef 0123456789abcdef").unwrap_err();
        assert!(spaced.contains("visible ASCII"), "{spaced}");
    }

    #[test]
    fn digest_debug_is_opaque() {
        assert_eq!(format!("{:?}", TokenDigest::of(b"x")), "TokenDigest(..)");
        assert!(TokenDigest::of(b"x").ct_eq(&TokenDigest::of(b"x")));
        assert!(!TokenDigest::of(b"x").ct_eq(&TokenDigest::of(b"y")));
    }
}
