//! Parameters from a request's query string (`?token=...&echo=false`).
//!
//! A leaf: nothing else in the crate.

/// The first value of parameter `name`, percent-decoded; `None` if absent
/// or not decodable as UTF-8.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value)).flatten()
    })
}

/// Decodes `%XX` escapes and `+`; `None` if malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b'+' => b' ',
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_found_and_decoded() {
        assert_eq!(
            param(Some("a=1&token=q%2Bv+x&b=2"), "token").as_deref(),
            Some("q+v x")
        );
        assert_eq!(param(Some("tokens=no"), "token"), None);
        assert_eq!(param(Some("echo"), "echo").as_deref(), Some(""));
        assert_eq!(param(Some("token=%zz"), "token"), None);
        assert_eq!(param(Some("token=%e2%9c"), "token"), None);
        assert_eq!(param(None, "token"), None);
        assert_eq!(param(Some("x=1&x=2"), "x").as_deref(), Some("1"));
    }
}
