//! Client certificates as identities: a certificate that TLS verified (signed by the client CA,
//! in its validity period, not on a CRL) is matched by name against `[[api.clients]]`, and the
//! matching entry gives its scopes and device patterns. The name is the certificate's subject
//! common name or one of its DNS subject alternative names. A verified certificate that no entry
//! names is not an identity: the request needs a token then.
//!
//! Devices and API clients may share a CA (the hub's own does both), so a certificate's name
//! alone does not make it a client: a certificate marked as a device's ([`Role::Device`], the OU
//! `hub certs issue-device` writes) is never an API identity, and while the client CA is the
//! hub's own, only certificates marked as a client's ([`Role::Client`]) are.

use rustls::pki_types::{CertificateDer, ServerName};

use super::pki::Role;
use super::tokens::{CERT_PREFIX, Identity, Scope};

/// One configured client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    /// CN or DNS SAN the certificate must carry.
    pub name: String,
    /// Scopes it grants.
    pub scopes: Vec<Scope>,
    /// Device patterns it is limited to; empty means all.
    pub devices: Vec<String>,
}

/// The configured clients.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentities {
    entries: Vec<ClientEntry>,
    /// Whether a certificate must carry the client mark: the client CA also issues devices'.
    clients_marked: bool,
}

impl ClientIdentities {
    /// Clients from configuration.
    pub fn new(entries: Vec<ClientEntry>) -> Self {
        ClientIdentities {
            entries,
            clients_marked: false,
        }
    }

    /// Takes only certificates marked as a client's ([`Role::Client`]): for a client CA that
    /// also signs devices' certificates, as the hub's own does.
    pub fn marked_only(mut self, marked: bool) -> Self {
        self.clients_marked = marked;
        self
    }

    /// Whether an entry for `name` exists.
    pub fn names(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name == name)
    }

    /// Adds an entry.
    pub fn push(&mut self, entry: ClientEntry) {
        self.entries.push(entry);
    }

    /// The identity of a verified client certificate (DER), if an entry names it.
    pub fn identify(&self, cert: &[u8]) -> Option<Identity> {
        if self.entries.is_empty() {
            return None;
        }
        match role(cert) {
            Some(Role::Device) => return None,
            Some(Role::Client) => {}
            None if self.clients_marked => return None,
            None => {}
        }
        let common_name = subject_common_name(cert);
        let der = CertificateDer::from(cert);
        let end_entity = webpki::EndEntityCert::try_from(&der).ok();
        let entry = self.entries.iter().find(|e| {
            common_name.as_deref() == Some(e.name.as_str())
                || end_entity.as_ref().is_some_and(|ee| {
                    ServerName::try_from(e.name.as_str())
                        .is_ok_and(|n| ee.verify_is_valid_for_subject_name(&n).is_ok())
                })
        })?;
        Some(Identity {
            name: format!("{CERT_PREFIX}{}", entry.name),
            scopes: entry.scopes.clone(),
            devices: entry.devices.clone(),
        })
    }
}

/// One DER element: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed element's content.
fn elements(mut content: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((tag, inner, rest)) = element(content) {
        out.push((tag, inner));
        content = rest;
    }
    out
}

/// The fields of a certificate's TBSCertificate after the optional version: serial, signature
/// algorithm, issuer, validity, subject, ...
fn tbs_fields(cert: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let (_, certificate, _) = element(cert)?;
    let (_, tbs, _) = element(certificate)?;
    let mut fields = elements(tbs);
    // The version is explicit tag [0] and optional.
    if fields.first().is_some_and(|(tag, _)| *tag == 0xA0) {
        fields.remove(0);
    }
    Some(fields)
}

/// The end of a DER certificate's validity, unix seconds.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let fields = tbs_fields(cert)?;
    let (_, validity) = *fields.get(3)?;
    let times = elements(validity);
    let (tag, text) = *times.get(1)?;
    let text = std::str::from_utf8(text).ok()?;
    // UTCTime YYMMDDHHMMSSZ (years 1950-2049), or GeneralizedTime YYYYMMDDHHMMSSZ.
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let num = |i: usize| -> Option<u8> { rest.get(i..i + 2)?.parse().ok() };
    let month = time::Month::try_from(num(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(2)?).ok()?;
    let at = date.with_hms(num(4)?, num(6)?, num(8)?).ok()?;
    Some(at.assume_utc().unix_timestamp())
}

/// The subject's common name (OID 2.5.4.3) of a DER certificate, if it has one.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
    subject_attributes(cert, &COMMON_NAME)?.into_iter().next()
}

/// The role a certificate's subject is marked with (an OU, OID 2.5.4.11, that the hub writes;
/// see [`Role`]); `None` when it carries neither mark. A certificate that carries both is a
/// device's: the mark that takes scopes away wins.
pub fn role(cert: &[u8]) -> Option<Role> {
    const ORGANIZATIONAL_UNIT: [u8; 3] = [0x55, 0x04, 0x0B];
    let units = subject_attributes(cert, &ORGANIZATIONAL_UNIT)?;
    [Role::Device, Role::Client]
        .into_iter()
        .find(|role| units.iter().any(|u| u == role.unit()))
}

/// Every value of the subject's attribute `oid` (DER content of the OID), in order.
fn subject_attributes(cert: &[u8], oid: &[u8]) -> Option<Vec<String>> {
    const SEQUENCE: u8 = 0x30;
    let fields = tbs_fields(cert)?;
    // serial, signature algorithm, issuer, validity, subject
    let (tag, subject) = *fields.get(4)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut values = Vec::new();
    for (_, rdn) in elements(subject) {
        for (_, attribute) in elements(rdn) {
            let parts = elements(attribute);
            if let [(0x06, found), (_, value)] = parts.as_slice()
                && *found == oid
                && let Ok(value) = std::str::from_utf8(value)
            {
                values.push(value.to_owned());
            }
        }
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert(cn: &str, sans: &[&str]) -> Vec<u8> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        assert_eq!(
            subject_common_name(&cert("app-1", &[])).as_deref(),
            Some("app-1")
        );
        assert_eq!(
            subject_common_name(&cert("x", &["y.example"])).as_deref(),
            Some("x")
        );
        assert_eq!(subject_common_name(b"\x30\x03\x02\x01\x01"), None);
        assert_eq!(subject_common_name(b""), None);
        // Truncated anywhere: no panic, no name.
        let der = cert("app-1", &["app-1"]);
        for cut in 0..der.len() {
            let _ = subject_common_name(&der[..cut]);
        }
    }

    fn marked(cn: &str, units: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec![cn.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for unit in units {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, *unit);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_device_certificate_is_never_a_client_whatever_its_name() {
        let admin = || ClientEntry {
            name: "admin".into(),
            scopes: vec![Scope::Admin],
            devices: vec![],
        };
        let device = marked("admin", &[Role::Device.unit()]);
        let client = marked("admin", &[Role::Client.unit()]);
        let unmarked = marked("admin", &[]);
        let both = marked("admin", &[Role::Client.unit(), Role::Device.unit()]);
        assert_eq!(role(&device), Some(Role::Device));
        assert_eq!(role(&client), Some(Role::Client));
        assert_eq!(role(&unmarked), None);
        assert_eq!(role(&both), Some(Role::Device));
        assert_eq!(role(&marked("x", &["ops"])), None);
        // The hub's own CA: only marked clients.
        let own = ClientIdentities::new(vec![admin()]).marked_only(true);
        assert!(own.identify(&client).is_some());
        assert!(own.identify(&device).is_none());
        assert!(own.identify(&unmarked).is_none());
        assert!(own.identify(&both).is_none());
        // An operator's CA: unmarked certificates are clients, devices' marks still refused.
        let theirs = ClientIdentities::new(vec![admin()]);
        assert!(theirs.identify(&unmarked).is_some());
        assert!(theirs.identify(&device).is_none());
        for cut in 0..device.len() {
            let _ = role(&device[..cut]);
        }
    }

    #[test]
    fn the_end_of_validity_is_read() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(not_after(&der), Some(1_900_000_000));
        // After 2049: GeneralizedTime.
        params.not_after = time::OffsetDateTime::from_unix_timestamp(2_600_000_000).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(not_after(&der), Some(2_600_000_000));
        for cut in 0..der.len() {
            let _ = not_after(&der[..cut]);
        }
    }

    #[test]
    fn certificates_are_matched_by_common_name_or_dns_name() {
        let clients = ClientIdentities::new(vec![
            ClientEntry {
                name: "app-1".into(),
                scopes: vec![Scope::Read],
                devices: vec!["gh-*".into()],
            },
            ClientEntry {
                name: "dash.lan".into(),
                scopes: vec![Scope::Command],
                devices: vec![],
            },
        ]);
        let by_cn = clients.identify(&cert("app-1", &[])).unwrap();
        assert_eq!(
            (
                by_cn.name.as_str(),
                by_cn.scopes.as_slice(),
                by_cn.devices.as_slice()
            ),
            ("cert:app-1", &[Scope::Read][..], &["gh-*".to_owned()][..])
        );
        let by_san = clients.identify(&cert("something", &["dash.lan"])).unwrap();
        assert_eq!(by_san.name, "cert:dash.lan");
        assert!(clients.identify(&cert("app-2", &["other.lan"])).is_none());
        assert!(
            ClientIdentities::default()
                .identify(&cert("app-1", &[]))
                .is_none()
        );
    }
}
