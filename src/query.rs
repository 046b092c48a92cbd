//! Parameters from a request's query string (`?token=...&echo=false`).
//!
//! A leaf: nothing else in the crate.

/// The first value of parameter `name`, percent-decoded (`+` as a space;
/// a malformed escape is kept as written, invalid UTF-8 replaced, so such a
/// value simply matches nothing); `None` if absent.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
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
        assert_eq!(param(Some("token=%zz"), "token").as_deref(), Some("%zz"));
        assert_eq!(
            param(Some("token=%e2%9c"), "token").as_deref(),
            Some("\u{fffd}")
        );
        assert_eq!(param(None, "token"), None);
        assert_eq!(param(Some("x=1&x=2"), "x").as_deref(), Some("1"));
    }
}
