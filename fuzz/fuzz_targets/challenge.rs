//! Fuzz target for `tower_auth::challenge`: the three parsers never panic,
//! stay within their caps, only return valid tokens, agree with each other,
//! and what they return survives a round trip through `push_quoted`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_auth::challenge::{self, Challenge, MAX_CHALLENGES, MAX_PARAMS};

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn check_params<'a>(params: impl Iterator<Item = (&'a str, &'a str)>) -> usize {
    let mut count = 0;
    for (name, value) in params {
        assert!(is_token(name), "param name {name:?}");
        // A quoted-string cannot carry control bytes other than HTAB.
        assert!(value.chars().all(|c| c == '\t' || !c.is_ascii_control()));
        count += 1;
    }
    assert!(count <= MAX_PARAMS);
    count
}

fn check(c: &Challenge) {
    assert!(is_token(c.scheme()), "scheme {:?}", c.scheme());
    assert!(c.is_scheme(&c.scheme().to_ascii_uppercase()));
    let params = check_params(c.params());
    if let Some(t) = c.token68() {
        assert!(is_token68(t), "token68 {t:?}");
        assert_eq!(params, 0);
    }
    for (name, _) in c.params() {
        assert!(c.param(name).is_some());
    }
    let _ = format!("{c:?}");
}

/// Writes `c` back as a header value.
fn serialize(c: &Challenge) -> String {
    let mut out = c.scheme().to_owned();
    if let Some(t) = c.token68() {
        out.push(' ');
        out.push_str(t);
    }
    for (i, (name, value)) in c.params().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(name);
        out.push('=');
        challenge::push_quoted(&mut out, value);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let list = challenge::parse(data);
    assert!(list.len() <= data.len() / 1 + 1);
    assert!(list.len() <= MAX_CHALLENGES);
    for c in &list {
        check(c);
        // Round trip through the serializer.
        let again = serialize(c);
        assert_eq!(challenge::parse(again.as_bytes()), vec![c.clone()], "{again:?}");
        let has_duplicates =
            c.params().enumerate().any(|(i, (n, _))| c.params().take(i).any(|(m, _)| m.eq_ignore_ascii_case(n)));
        if !has_duplicates {
            assert_eq!(challenge::parse_credentials(again.as_bytes()).as_ref(), Ok(c), "{again:?}");
        }
    }

    match challenge::parse_credentials(data) {
        Ok(c) => {
            check(&c);
            // What the strict parser accepts, the lenient one reads the same way.
            assert_eq!(list, vec![c]);
        }
        Err(e) => {
            assert!(e.offset() <= data.len());
            let _ = e.to_string();
        }
    }

    match challenge::parse_params(data) {
        Ok(params) => {
            check_params(params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        }
        Err(e) => assert!(e.offset() <= data.len()),
    }
});
