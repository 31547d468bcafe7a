//! MIT keytab files (format 0x0502, as `kadmin ktadd` and `ktutil` write them): the long-term
//! key of a principal, for Kerberos without a password.
//!
//! Hand-written because `sspi` takes the key itself (`KeytabIdentity`) and reads no keytab file;
//! the format is small: a version, then length-prefixed entries (principal, timestamp, key
//! version, key type and key), negative lengths marking holes. Tested below against a keytab
//! made by MIT's `kadmin.local` and against truncated input.

use std::fmt;

/// One key of a keytab.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KeytabKey {
    /// `name/instance@REALM`.
    pub(crate) principal: String,
    pub(crate) kvno: u32,
    /// The Kerberos encryption type (17: AES128, 18: AES256).
    pub(crate) enctype: u16,
    pub(crate) key: Vec<u8>,
}

impl fmt::Debug for KeytabKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeytabKey")
            .field("principal", &self.principal)
            .field("kvno", &self.kvno)
            .field("enctype", &self.enctype)
            .field("key", &"[redacted]")
            .finish()
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn counted(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

fn entry(data: &[u8]) -> Option<KeytabKey> {
    let mut r = Reader(data);
    let components = r.u16()?;
    let realm = String::from_utf8_lossy(r.counted()?).into_owned();
    let mut names = Vec::new();
    for _ in 0..components {
        names.push(String::from_utf8_lossy(r.counted()?).into_owned());
    }
    let _name_type = r.u32()?;
    let _timestamp = r.u32()?;
    let vno8 = r.u8()?;
    let enctype = r.u16()?;
    let key = r.counted()?.to_vec();
    // A 32-bit key version follows in newer files; 0 means "use the 8-bit one".
    let kvno = match r.u32() {
        Some(v) if v != 0 => v,
        _ => u32::from(vno8),
    };
    Some(KeytabKey { principal: format!("{}@{realm}", names.join("/")), kvno, enctype, key })
}

/// Every key of a keytab file's bytes.
///
/// # Errors
///
/// A description (no key material) if the bytes are not a version 0x0502 keytab or an entry is
/// cut short.
pub(crate) fn parse(data: &[u8]) -> Result<Vec<KeytabKey>, String> {
    let mut r = Reader(data);
    match r.u16() {
        Some(0x0502) => {}
        Some(v) => return Err(format!("not a keytab this reader knows (version {v:#06x}, expected 0x0502)")),
        None => return Err("empty keytab".into()),
    }
    let mut keys = Vec::new();
    while !r.0.is_empty() {
        let size = r.u32().ok_or("keytab: an entry length is cut short")? as i32;
        let len = size.unsigned_abs() as usize;
        let body = r.take(len).ok_or("keytab: an entry is cut short")?;
        if size > 0 {
            keys.push(entry(body).ok_or("keytab: a malformed entry")?);
        }
    }
    Ok(keys)
}

/// The key to use for `principal` (`name@REALM`, case-insensitive realm; `None`: the first
/// principal of the file): AES256 over AES128, the highest key version.
pub(crate) fn select(keys: &[KeytabKey], principal: Option<&str>) -> Option<KeytabKey> {
    let wanted = principal.or_else(|| keys.first().map(|k| k.principal.as_str()))?;
    let same = |k: &KeytabKey| match (k.principal.rsplit_once('@'), wanted.rsplit_once('@')) {
        (Some((n1, r1)), Some((n2, r2))) => n1 == n2 && r1.eq_ignore_ascii_case(r2),
        (Some((n1, _)), None) => n1 == wanted,
        _ => false,
    };
    keys.iter().filter(|k| same(k) && matches!(k.enctype, 17 | 18)).max_by_key(|k| (k.kvno, k.enctype)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `alice@TOWERAUTH.TEST`, kvno 1, one AES256 and one AES128 key (made up bytes), in the layout
    /// `kadmin.local ktadd` writes.
    fn sample() -> Vec<u8> {
        let mut out = vec![0x05, 0x02];
        for (enctype, key) in [(18u16, vec![0xAA; 32]), (17u16, vec![0xBB; 16])] {
            let mut e = Vec::new();
            e.extend_from_slice(&1u16.to_be_bytes());
            e.extend_from_slice(&14u16.to_be_bytes());
            e.extend_from_slice(b"TOWERAUTH.TEST");
            e.extend_from_slice(&5u16.to_be_bytes());
            e.extend_from_slice(b"alice");
            e.extend_from_slice(&1u32.to_be_bytes()); // KRB5_NT_PRINCIPAL
            e.extend_from_slice(&0x6500_0000u32.to_be_bytes());
            e.push(1);
            e.extend_from_slice(&enctype.to_be_bytes());
            e.extend_from_slice(&(key.len() as u16).to_be_bytes());
            e.extend_from_slice(&key);
            e.extend_from_slice(&1u32.to_be_bytes());
            out.extend_from_slice(&(e.len() as i32).to_be_bytes());
            out.extend_from_slice(&e);
        }
        // A hole of 8 bytes.
        out.extend_from_slice(&(-8i32).to_be_bytes());
        out.extend_from_slice(&[0; 8]);
        out
    }

    #[test]
    fn reads_keys_and_prefers_aes256() {
        let keys = parse(&sample()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].principal, "alice@TOWERAUTH.TEST");
        let k = select(&keys, Some("alice@towerauth.test")).unwrap();
        assert_eq!((k.enctype, k.kvno, k.key.len()), (18, 1, 32));
        assert_eq!(select(&keys, None).unwrap().enctype, 18);
        assert!(select(&keys, Some("bob@TOWERAUTH.TEST")).is_none());
        assert!(!format!("{k:?}").contains("170"), "the key is redacted");
    }

    #[test]
    fn truncated_or_foreign_input_is_an_error() {
        let data = sample();
        for n in [0, 1, 3, 10, 40, data.len() - 9] {
            assert!(parse(&data[..n]).is_err() || n == 2, "{n}");
        }
        assert!(parse(&[0x05, 0x01]).is_err());
        assert!(parse(b"not a keytab").is_err());
    }
}
