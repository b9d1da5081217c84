//! Explains a 401 `SIGN_ERROR`: compares WeChat's `detail.sign_information` with the string we
//! actually signed and names the first difference.

use std::fmt;

use percent_encoding::percent_decode_str;
use serde_json::Value;

/// Names of the five request sign-string lines.
const LINE_NAMES: [&str; 5] = ["method", "URL", "timestamp", "nonce", "body"];

/// What the comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignDifference {
    /// WeChat saw another HTTP method.
    Method {
        /// WeChat's.
        wechat: String,
        /// Ours.
        ours: String,
    },
    /// Same URL once percent-decoded: the query or path is encoded differently.
    UrlEncoding {
        /// WeChat's.
        wechat: String,
        /// Ours.
        ours: String,
    },
    /// A different URL (path prefix added by a gateway, other query…).
    Url {
        /// WeChat's.
        wechat: String,
        /// Ours.
        ours: String,
    },
    /// Our string has CR LF where WeChat's has LF.
    CrLf {
        /// 1-based line number.
        line: usize,
    },
    /// Our string lacks the final `\n` after the body.
    MissingTrailingNewline,
    /// The strings differ at a byte inside a line.
    Line {
        /// 1-based line number.
        line: usize,
        /// Byte offset in the whole string.
        offset: usize,
        /// A few bytes of WeChat's string from there.
        wechat: String,
        /// A few bytes of ours from there.
        ours: String,
    },
    /// The strings agree as far as WeChat shows, but their byte lengths differ.
    Length {
        /// WeChat's full sign string length.
        wechat: usize,
        /// Ours.
        ours: usize,
    },
    /// Identical strings: the signature is wrong, so the key does not match the serial.
    KeyMismatch,
    /// WeChat gave no usable `sign_information`.
    NoInformation,
}

/// The result of [`explain_sign_error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignExplanation {
    /// The first difference found.
    pub difference: SignDifference,
    /// WeChat's `sign_message_length`, if given.
    pub wechat_length: Option<usize>,
    /// Our sign string's byte length.
    pub our_length: usize,
}

impl fmt::Display for SignExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SignDifference as D;
        f.write_str("sign string check: ")?;
        match &self.difference {
            D::Method { wechat, ours } => {
                write!(f, "line 1 (method): WeChat saw {wechat}, you signed {ours}")
            }
            D::UrlEncoding { wechat, ours } => write!(
                f,
                "line 2 (URL) is encoded differently: WeChat saw `{wechat}`, you signed `{ours}`; sign the path and query exactly as sent"
            ),
            D::Url { wechat, ours } => write!(
                f,
                "line 2 (URL): WeChat saw `{wechat}`, you signed `{ours}` (a gateway prefix or rewritten query?)"
            ),
            D::CrLf { line } => write!(
                f,
                "line {line} ({}) ends with CR LF in the string you signed; every line must end with LF only",
                LINE_NAMES[(line - 1).min(4)]
            ),
            D::MissingTrailingNewline => {
                f.write_str("the string you signed lacks the final LF after the body line")
            }
            D::Line {
                line,
                offset,
                wechat,
                ours,
            } => write!(
                f,
                "line {line} ({}) differs at byte {offset}: WeChat has `{wechat}`, you signed `{ours}`",
                LINE_NAMES[(line - 1).min(4)]
            ),
            D::Length { wechat, ours } => write!(
                f,
                "byte length differs: WeChat's sign string is {wechat} bytes, yours {ours} ({:+}); the body sent is not the body signed (re-serialised, pretty-printed or re-encoded?)",
                *ours as i64 - *wechat as i64
            ),
            D::KeyMismatch => write!(
                f,
                "the strings match ({} bytes); the signature itself is wrong: the private key does not belong to the certificate serial sent as serial_no",
                self.our_length
            ),
            D::NoInformation => f.write_str("WeChat sent no sign_information to compare with"),
        }
    }
}

fn escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            c => s.push(c),
        }
    }
    s
}

fn line_of(bytes: &[u8], offset: usize) -> usize {
    (bytes[..offset].iter().filter(|b| **b == b'\n').count() + 1).min(5)
}

/// Compares `ours` (the exact bytes signed) with WeChat's `detail.sign_information`.
pub fn explain_sign_error(ours: &[u8], sign_information: Option<&Value>) -> SignExplanation {
    let our_length = ours.len();
    let info = sign_information.and_then(Value::as_object);
    let wechat_length = info
        .and_then(|i| i.get("sign_message_length"))
        .and_then(|v| match v {
            Value::Number(n) => n.as_u64().map(|n| n as usize),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
    let difference = match info {
        None => SignDifference::NoInformation,
        Some(info) => {
            let get = |k: &str| info.get(k).and_then(Value::as_str).unwrap_or_default();
            compare(
                ours,
                get("method"),
                get("url"),
                get("truncated_sign_message"),
                wechat_length,
            )
        }
    };
    SignExplanation {
        difference,
        wechat_length,
        our_length,
    }
}

fn compare(
    ours: &[u8],
    method: &str,
    url: &str,
    truncated: &str,
    wechat_len: Option<usize>,
) -> SignDifference {
    let mut lines = ours.splitn(3, |b| *b == b'\n');
    let our_method = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let our_url = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let our_method = our_method.trim_end_matches('\r');
    let our_url = our_url.trim_end_matches('\r');
    if !method.is_empty() && method != our_method {
        return SignDifference::Method {
            wechat: method.to_string(),
            ours: our_method.to_string(),
        };
    }
    if !url.is_empty() && url != our_url {
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', "%20"))
                .decode_utf8_lossy()
                .into_owned()
        };
        return if decode(url) == decode(our_url) {
            SignDifference::UrlEncoding {
                wechat: url.to_string(),
                ours: our_url.to_string(),
            }
        } else {
            SignDifference::Url {
                wechat: url.to_string(),
                ours: our_url.to_string(),
            }
        };
    }
    // WeChat may render line feeds as the two characters `\n`.
    let theirs: Vec<u8> = if !truncated.contains('\n') && truncated.contains("\\n") {
        truncated.replace("\\n", "\n").into_bytes()
    } else {
        truncated.as_bytes().to_vec()
    };
    let common = theirs.len().min(ours.len());
    if let Some(i) = (0..common).find(|&i| theirs[i] != ours[i]) {
        let line = line_of(ours, i);
        if ours[i] == b'\r' && theirs[i] == b'\n' {
            return SignDifference::CrLf { line };
        }
        // WeChat cuts the body short and closes it with `\n`: that is truncation, not a difference.
        let is_cut = i + 1 == theirs.len() && theirs[i] == b'\n' && line == 5;
        if !is_cut {
            return SignDifference::Line {
                line,
                offset: i,
                wechat: escape(&theirs[i..(i + 24).min(theirs.len())]),
                ours: escape(&ours[i..(i + 24).min(ours.len())]),
            };
        }
    }
    let wechat_len = wechat_len.unwrap_or(theirs.len());
    if wechat_len == ours.len() {
        SignDifference::KeyMismatch
    } else if wechat_len == ours.len() + 1 && ours.iter().filter(|b| **b == b'\n').count() == 4 {
        SignDifference::MissingTrailingNewline
    } else {
        SignDifference::Length {
            wechat: wechat_len,
            ours: ours.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OURS: &[u8] = b"POST\n/v3/businesscircle/points/notify\n1554208460\nNONCE\n{\"a\":1}\n";

    fn info(method: &str, url: &str, msg: &str, len: usize) -> Value {
        json!({"method": method, "url": url, "truncated_sign_message": msg, "sign_message_length": len})
    }

    #[test]
    fn identical_strings_mean_the_key_is_wrong() {
        let s = std::str::from_utf8(OURS).unwrap();
        let e = explain_sign_error(
            OURS,
            Some(&info(
                "POST",
                "/v3/businesscircle/points/notify",
                s,
                OURS.len(),
            )),
        );
        assert_eq!(e.difference, SignDifference::KeyMismatch);
        assert!(e.to_string().contains("private key does not belong"));
    }

    #[test]
    fn truncated_body_with_equal_length_is_a_key_mismatch_and_length_may_be_a_string() {
        let msg = "POST\n/v3/businesscircle/points/notify\n1554208460\nNONCE\n{\"a\n";
        let v = json!({"method":"POST","url":"/v3/businesscircle/points/notify","truncated_sign_message":msg,"sign_message_length": OURS.len().to_string()});
        let e = explain_sign_error(OURS, Some(&v));
        assert_eq!(e.difference, SignDifference::KeyMismatch);
        assert_eq!(e.wechat_length, Some(OURS.len()));
    }

    #[test]
    fn crlf_lines_are_named() {
        let ours = b"POST\r\n/v3/x\r\n1\r\nN\r\n{}\r\n";
        let e = explain_sign_error(
            ours,
            Some(&info("POST", "/v3/x", "POST\n/v3/x\n1\nN\n{}\n", 16)),
        );
        assert_eq!(e.difference, SignDifference::CrLf { line: 1 });
        assert!(e.to_string().contains("CR LF"), "{e}");
    }

    #[test]
    fn missing_trailing_newline_is_named() {
        let ours = b"GET\n/v3/x\n1\nN\n";
        let e = explain_sign_error(
            ours,
            Some(&info("GET", "/v3/x", "GET\n/v3/x\n1\nN\n\n", 15)),
        );
        assert_eq!(e.difference, SignDifference::MissingTrailingNewline);
    }

    #[test]
    fn query_encoding_is_named() {
        let ours = b"GET\n/v3/x?a=%E5%BE%AE\n1\nN\n\n";
        let e = explain_sign_error(ours, Some(&info("GET", "/v3/x?a=微", "", 0)));
        assert!(
            matches!(e.difference, SignDifference::UrlEncoding { .. }),
            "{e:?}"
        );
        let e = explain_sign_error(ours, Some(&info("GET", "/gw/v3/x?a=%E5%BE%AE", "", 0)));
        assert!(matches!(e.difference, SignDifference::Url { .. }), "{e:?}");
    }

    #[test]
    fn method_is_named() {
        let e = explain_sign_error(
            OURS,
            Some(&info("GET", "/v3/businesscircle/points/notify", "", 0)),
        );
        assert!(
            e.to_string().contains("WeChat saw GET, you signed POST"),
            "{e}"
        );
    }

    #[test]
    fn byte_length_difference_is_named() {
        let msg = "POST\n/v3/businesscircle/points/notify\n1554208460\nNONCE\n{\"a\n";
        let e = explain_sign_error(
            OURS,
            Some(&info(
                "POST",
                "/v3/businesscircle/points/notify",
                msg,
                OURS.len() + 8,
            )),
        );
        assert_eq!(
            e.difference,
            SignDifference::Length {
                wechat: OURS.len() + 8,
                ours: OURS.len()
            }
        );
        assert!(e.to_string().contains("-8"), "{e}");
    }

    #[test]
    fn a_different_timestamp_is_located() {
        let msg = "POST\n/v3/businesscircle/points/notify\n1554208461\nNONCE\n{\"a\n";
        let e = explain_sign_error(
            OURS,
            Some(&info(
                "POST",
                "/v3/businesscircle/points/notify",
                msg,
                OURS.len(),
            )),
        );
        assert!(
            matches!(e.difference, SignDifference::Line { line: 3, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn escaped_line_feeds_are_understood() {
        let msg = r#"POST\n/v3/businesscircle/points/notify\n1554208460\nNONCE\n{"a\n"#;
        let e = explain_sign_error(
            OURS,
            Some(&info(
                "POST",
                "/v3/businesscircle/points/notify",
                msg,
                OURS.len(),
            )),
        );
        assert_eq!(e.difference, SignDifference::KeyMismatch);
    }

    #[test]
    fn no_information() {
        assert_eq!(
            explain_sign_error(OURS, None).difference,
            SignDifference::NoInformation
        );
    }
}
