//! Request bodies: a JSON-object filter with a content type check and a size cap,
//! and `Fields`, which pulls typed values out of the object while collecting every
//! problem so a 400 can list them all at once.
//!
//! Bodies are parsed into `serde_json::Value` first, not straight into structs:
//! serde's type errors quote the offending value, which could be a password.

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Map, Value};
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::Filter;

use super::MAX_BODY_BYTES;
use crate::domain::FieldError;
use crate::error::AppError;

/// Extracts the request body as a JSON object, or rejects with 415, 413/411 or 400.
pub fn json_object() -> BoxedFilter<(Map<String, Value>,)> {
    warp::header::headers_cloned()
        .and_then(|headers: HeaderMap| async move {
            if is_json(&headers) {
                Ok(())
            } else {
                Err(warp::reject::custom(AppError::UnsupportedMediaType))
            }
        })
        .untuple_one()
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(|declared: Option<u64>, body| async move {
            let bytes = read_capped(declared, body)
                .await
                .map_err(warp::reject::custom)?;
            parse_object(&bytes).map_err(warp::reject::custom)
        })
        .boxed()
}

/// The raw body, capped like `json_object` (for endpoints whose body is optional).
pub fn bytes_capped() -> BoxedFilter<(Bytes,)> {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(|declared: Option<u64>, body| async move {
            read_capped(declared, body)
                .await
                .map_err(warp::reject::custom)
        })
        .boxed()
}

/// Reads the body up to `MAX_BODY_BYTES`, chunked or not: a declared length over
/// the cap is refused before reading, an undeclared one as soon as it passes it.
async fn read_capped<S, B>(declared: Option<u64>, body: S) -> Result<Bytes, AppError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = AppError::PayloadTooLarge {
        limit: MAX_BODY_BYTES,
    };
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large);
    }
    let mut buf = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| AppError::BadRequest("the request body could not be read".into()))?;
        if (buf.len() + chunk.remaining()) as u64 > MAX_BODY_BYTES {
            return Err(too_large);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(warp::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses bytes into a JSON object; the error says where, never what.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, AppError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(AppError::MalformedJson(
            "the body must be a JSON object".to_owned(),
        )),
        Err(e) if e.is_eof() && bytes.iter().all(u8::is_ascii_whitespace) => {
            Err(AppError::MalformedJson("the body is empty".to_owned()))
        }
        Err(e) => Err(AppError::MalformedJson(format!(
            "syntax error at line {}, column {}",
            e.line(),
            e.column()
        ))),
    }
}

/// Typed access to a JSON object's fields, collecting every problem.
pub struct Fields {
    map: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Fields {
    pub fn new(map: Map<String, Value>) -> Fields {
        Fields {
            map,
            errors: Vec::new(),
        }
    }

    /// A required string field, handed to `parse`; a missing, null or non-string
    /// field, or a parse failure, is recorded and gives `None`.
    pub fn parse<T>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(&str) -> Result<T, (&'static str, String)>,
    ) -> Option<T> {
        match self.map.get(field) {
            None | Some(Value::Null) => {
                self.errors.push(FieldError::new(
                    field,
                    "required",
                    format!("{field} is required"),
                ));
                None
            }
            Some(Value::String(s)) => match parse(s) {
                Ok(v) => Some(v),
                Err((code, message)) => {
                    self.errors.push(FieldError::new(field, code, message));
                    None
                }
            },
            Some(_) => {
                self.errors.push(FieldError::new(
                    field,
                    "invalid_type",
                    format!("{field} must be a string"),
                ));
                None
            }
        }
    }

    /// An optional string field: absent or null gives `None`; a non-string or a
    /// parse failure is recorded like `parse` does.
    pub fn optional<T>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(&str) -> Result<T, (&'static str, String)>,
    ) -> Option<T> {
        match self.map.get(field) {
            None | Some(Value::Null) => None,
            Some(_) => self.parse(field, parse),
        }
    }

    /// True when `field` is present and not null (whatever its type).
    pub fn present(&self, field: &str) -> bool {
        !matches!(self.map.get(field), None | Some(Value::Null))
    }

    /// Records a problem no single field's parser can see (fields that go
    /// together, or exclude each other).
    pub fn problem(&mut self, field: &'static str, code: &'static str, message: &str) {
        self.errors.push(FieldError::new(field, code, message));
    }

    /// `Ok(())` when no field had a problem, else the 400 listing all of them.
    pub fn finish(self) -> Result<(), AppError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_object_refuses_non_objects_without_quoting_input() {
        assert!(parse_object(br#"{"a":1}"#).is_ok());
        for bad in [
            &b"[1]"[..],
            b"\"secret\"",
            b"",
            b"  ",
            b"{\"password\": \"hunter2\"",
            b"nul",
        ] {
            let err = parse_object(bad).unwrap_err();
            assert_eq!(err.code(), "malformed_json");
            assert!(!err.public_message().contains("hunter2"));
        }
    }

    #[test]
    fn fields_collect_every_problem() {
        let map = parse_object(br#"{"a": 5, "b": null, "d": "x"}"#).unwrap();
        let mut f = Fields::new(map);
        let ok = |s: &str| Ok::<_, (&'static str, String)>(s.to_owned());
        assert_eq!(f.parse("a", ok), None);
        assert_eq!(f.parse("b", ok), None);
        assert_eq!(f.parse("c", ok), None);
        assert_eq!(
            f.parse("d", |_| Err::<String, _>((
                "too_short",
                "d is short".into()
            ))),
            None
        );
        match f.finish() {
            Err(AppError::Validation(list)) => {
                let got: Vec<_> = list.iter().map(|e| (e.field, e.code)).collect();
                assert_eq!(
                    got,
                    [
                        ("a", "invalid_type"),
                        ("b", "required"),
                        ("c", "required"),
                        ("d", "too_short")
                    ]
                );
            }
            other => panic!("expected validation error, got {other:?}"),
        }
    }
}
