//! Small helpers shared by every client of the gateway API: URLs, reading error bodies
//! leniently, and describing transport errors with their causes.

use std::fmt;

use outpost_proto::ErrorBody;

/// `https://{gateway}{path}`.
#[must_use]
pub fn url(gateway: &str, path: &str) -> String {
    format!("https://{gateway}{path}")
}

/// A non-success answer from a gateway, read as far as it can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// HTTP status.
    pub status: u16,
    /// The `error` code of the body, when it was an [`ErrorBody`].
    pub code: Option<String>,
    /// The `message` of the body, or the start of the raw body.
    pub message: String,
    /// `expected_seq` carried by a `sequence_gap` answer.
    pub expected_seq: Option<u64>,
}

/// Longest raw body quoted in a message.
const MAX_QUOTED_BODY: usize = 200;

impl ErrorReply {
    /// Reads an error answer. Never fails: a body that is not an [`ErrorBody`] is quoted.
    #[must_use]
    pub fn parse(status: u16, body: &[u8]) -> Self {
        let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let typed: Option<ErrorBody> = value
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let expected_seq = value
            .as_ref()
            .and_then(|v| v.get("expected_seq"))
            .and_then(|s| {
                s.as_u64()
                    .or_else(|| s.as_str().and_then(|t| t.trim().parse().ok()))
            });
        match typed {
            Some(b) => Self {
                status,
                code: Some(b.error),
                message: b.message,
                expected_seq,
            },
            None => {
                let text = String::from_utf8_lossy(body);
                let mut message: String = text.trim().chars().take(MAX_QUOTED_BODY).collect();
                if message.is_empty() {
                    message = "(no body)".into();
                }
                Self {
                    status,
                    code: None,
                    message,
                    expected_seq,
                }
            }
        }
    }

    /// Whether the answer says the request can never succeed as sent (4xx other than
    /// timeouts and rate limits).
    #[must_use]
    pub fn is_client_error(&self) -> bool {
        (400..500).contains(&self.status) && !matches!(self.status, 408 | 429)
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "HTTP {} {code}: {}", self.status, self.message),
            None => write!(f, "HTTP {}: {}", self.status, self.message),
        }
    }
}

/// An error and its causes on one line: `a: b: c`.
#[must_use]
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_error_body_with_expected_seq() {
        let r = ErrorReply::parse(
            409,
            br#"{"error":"sequence_gap","message":"expected 4","expected_seq":4}"#,
        );
        assert_eq!(r.code.as_deref(), Some("sequence_gap"));
        assert_eq!(r.expected_seq, Some(4));
        assert_eq!(r.to_string(), "HTTP 409 sequence_gap: expected 4");
        assert!(r.is_client_error());
    }

    #[test]
    fn quotes_other_bodies() {
        let r = ErrorReply::parse(502, b"  bad gateway  ");
        assert_eq!(r.code, None);
        assert_eq!(r.message, "bad gateway");
        assert!(!r.is_client_error());
        assert_eq!(ErrorReply::parse(500, b"").message, "(no body)");
        let r = ErrorReply::parse(409, br#"{"expected_seq":"9"}"#);
        assert_eq!(r.expected_seq, Some(9));
    }

    #[test]
    fn url_joins_gateway_and_path() {
        assert_eq!(url("gw:5723", "/v1/ingest"), "https://gw:5723/v1/ingest");
    }
}
