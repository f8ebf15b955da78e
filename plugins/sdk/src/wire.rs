//! The CBOR envelope every REQ-REP endpoint speaks (see docs/PROTOCOL.md).
//!
//! Request: `{"v": 1, "kind": text, "body": any}`.
//! Reply:   `{"v": 1, "ok": bool, "body": any, "error": null | {"code": text, "message": text},
//!            "initial_gestors": [text]}`.

use crate::error::{ErrorCode, HandlerError};
use ciborium::Value;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Protocol version carried in every envelope.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    pub kind: String,
    #[serde(default = "null")]
    pub body: Value,
}

fn null() -> Value {
    Value::Null
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    pub ok: bool,
    #[serde(default = "null")]
    pub body: Value,
    #[serde(default)]
    pub error: Option<HandlerError>,
    /// The newest list of initial gestors this node knows (seed §1).
    #[serde(default)]
    pub initial_gestors: Vec<String>,
}

impl Request {
    pub fn new(kind: impl Into<String>, body: Value) -> Self {
        Request {
            v: PROTOCOL_VERSION,
            kind: kind.into(),
            body,
        }
    }
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Reply {
            v: PROTOCOL_VERSION,
            ok: true,
            body,
            error: None,
            initial_gestors: Vec::new(),
        }
    }
    pub fn err(error: HandlerError) -> Self {
        Reply {
            v: PROTOCOL_VERSION,
            ok: false,
            body: Value::Null,
            error: Some(error),
            initial_gestors: Vec::new(),
        }
    }
    pub fn from_result(result: Result<Value, HandlerError>) -> Self {
        match result {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(e),
        }
    }
    pub fn into_result(self) -> Result<Value, HandlerError> {
        if self.ok {
            Ok(self.body)
        } else {
            Err(self
                .error
                .unwrap_or_else(|| HandlerError::internal("error reply without error")))
        }
    }
}

/// Serialize any value to CBOR bytes.
pub fn to_cbor<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail; a serializer error would be a bug in a
    // Serialize impl of ours, and an empty frame is then decoded as malformed.
    if ciborium::into_writer(value, &mut out).is_err() {
        out.clear();
    }
    out
}

/// Parse CBOR bytes into `T`; the error text is for humans.
pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| e.to_string())
}

/// Convert a serializable value into a CBOR [`Value`] (for request/reply bodies).
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Value {
    Value::serialized(value).unwrap_or(Value::Null)
}

/// Read a request body into `T`, or a `bad_request` error naming what is wrong.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, HandlerError> {
    value
        .deserialized()
        .map_err(|e| HandlerError::new(ErrorCode::BadRequest, format!("invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let req = Request::new("echo", Value::Text("hi".into()));
        let back: Request = from_cbor(&to_cbor(&req)).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn error_reply_round_trip() {
        let mut reply = Reply::err(HandlerError::new(ErrorCode::NotFound, "no such user"));
        reply.initial_gestors = vec!["tcp://127.0.0.1:1".into()];
        let back: Reply = from_cbor(&to_cbor(&reply)).unwrap();
        assert_eq!(back.error.unwrap().code, ErrorCode::NotFound);
        assert_eq!(back.initial_gestors.len(), 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(from_cbor::<Request>(&[0xff, 0x00, 0x13]).is_err());
        assert!(from_cbor::<Request>(&[]).is_err());
    }
}
