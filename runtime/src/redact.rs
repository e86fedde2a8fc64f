//! Secrets out of everything printed: URLs with userinfo, and `password=` options.
//!
//! Store URLs carry credentials (`postgres://app:pw@db/…`, `rediss://:pw@cache`,
//! `mongodb://u:pw@h1,h2/…`, `https://elastic:pw@es:9200`). Whatever prints one (a log line,
//! an error's context, `/metrics`) goes through [`url`] (one URL) or [`text`] (any text, e.g.
//! a library's error that quotes its URL), which keep the user and mask the password:
//! `postgres://app:***@db/…`. [`Writer`] applies [`text`] to a log stream as a last line of
//! defence for messages nobody thought of.

use std::borrow::Cow;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Query or option names whose values are secrets (`?password=`, `sslpassword=`, `api_key=`).
fn secret_option(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token", "api_key", "apikey"]
        .iter()
        .any(|s| n.contains(s))
}

/// Characters that end a URL's authority in running text.
fn ends_authority(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>' | ')' | ']'
        )
}

/// Masks the password of every `scheme://user:password@host` in `s`, and the value of every
/// `password=`-like option. Borrowed when there is nothing to mask.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.contains("://") && !s.contains('=') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after.find(ends_authority).unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    // `postgres://app@db`: a lone userinfo is a user name in every URL here.
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    mask_options(&out).into_owned().into()
}

/// Masks the values of `password=…`-like options (up to `&`, whitespace or a quote).
fn mask_options(s: &str) -> Cow<'_, str> {
    if !s.contains('=') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let (head, tail) = rest.split_at(eq);
        let name_start = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
            .map_or(0, |i| i + 1);
        out.push_str(head);
        out.push('=');
        let tail = &tail[1..];
        let value_end = tail
            .find(|c: char| {
                c == '&' || c == ';' || c.is_whitespace() || matches!(c, '"' | '\'' | '`')
            })
            .unwrap_or(tail.len());
        if secret_option(&head[name_start..]) && value_end > 0 {
            out.push_str(MASK);
        } else {
            out.push_str(&tail[..value_end]);
        }
        rest = &tail[value_end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// One URL, safe to print.
pub fn url(u: &str) -> String {
    text(u).into_owned()
}

/// An `io::Write` that masks secrets in what passes through it: wrap a log writer with it
/// (`tracing_subscriber::fmt().with_writer(|| Writer(std::io::stderr()))`). Each `write`
/// is masked on its own; tracing's formatter writes a whole event at once.
pub struct Writer<W>(pub W);

impl<W: std::io::Write> std::io::Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = String::from_utf8_lossy(buf);
        self.0.write_all(text(&s).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_users_and_hosts_kept() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/shop?sslmode=require",
                "postgres://app:***@db:5432/shop?sslmode=require",
            ),
            (
                "rediss://:s3cret@cache:6380/0",
                "rediss://:***@cache:6380/0",
            ),
            ("redis://default:s3cret@cache", "redis://default:***@cache"),
            (
                "mongodb://u:s3cret@h1:27017,h2:27017/db?replicaSet=rs",
                "mongodb://u:***@h1:27017,h2:27017/db?replicaSet=rs",
            ),
            (
                "https://elastic:p%40ss@es:9200",
                "https://elastic:***@es:9200",
            ),
            (
                "postgres://root@127.0.0.1:5432/tributary",
                "postgres://root@127.0.0.1:5432/tributary",
            ),
            (
                "postgres://app@db/shop?password=s3cret&sslmode=require",
                "postgres://app@db/shop?password=***&sslmode=require",
            ),
            ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
        ];
        for (given, want) in cases {
            assert_eq!(url(given), want);
        }
    }

    #[test]
    fn urls_inside_messages_are_masked() {
        let msg = "connecting to PostgreSQL at postgres://app:s3cret@db/shop: refused; \
                   retrying `redis://:hunter2@cache:6379` (password=hunter3 user=x)";
        let out = text(msg);
        for secret in ["s3cret", "hunter2", "hunter3"] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(out.contains("postgres://app:***@db/shop: refused"), "{out}");
        assert!(out.contains("user=x"), "{out}");
        assert!(matches!(text("nothing to see"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_writer_masks_what_passes() {
        use std::io::Write;
        let mut w = Writer(Vec::new());
        w.write_all(b"url=postgres://a:b@c/d\n").unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "url=postgres://a:***@c/d\n"
        );
    }
}
