//! Redaction of credentials in database URLs and error texts before they reach a log or a client.

/// `scheme://user:password@host/db` becomes `scheme://user:***@host/db`; `password=` and
/// `sslpassword=` query parameters become `password=***`. Text without a URL is unchanged.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the first '/', '?', '#', whitespace or quote.
        let end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | ')') || c.is_whitespace()
            })
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at_sign) => {
                let userinfo = &authority[..at_sign];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at_sign..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    redact_password_params(&out)
}

fn redact_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(at) = lower.find("password=") else {
            out.push_str(rest);
            return out;
        };
        let value_start = at + "password=".len();
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        let end = value
            .find(|c: char| matches!(c, '&' | '"' | '\'' | '`' | ')') || c.is_whitespace())
            .unwrap_or(value.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &value[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::redact_urls;

    #[test]
    fn passwords_in_urls_and_query_parameters_are_masked() {
        assert_eq!(
            redact_urls("opening the store at postgres://tollgate:s3cr%40t@db:5432/tg failed"),
            "opening the store at postgres://tollgate:***@db:5432/tg failed"
        );
        assert_eq!(
            redact_urls("'mysql://u:p@h/x' and postgres://u@h/x?sslmode=require&password=abc"),
            "'mysql://u:***@h/x' and postgres://u@h/x?sslmode=require&password=***"
        );
        assert_eq!(
            redact_urls("sqlite:///var/lib/tollgate.db"),
            "sqlite:///var/lib/tollgate.db"
        );
        assert_eq!(
            redact_urls("no url here, user:pass@host"),
            "no url here, user:pass@host"
        );
    }
}
