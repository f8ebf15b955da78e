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

/// Encode `reply` with `initial_gestors` in place of its own list, without
/// copying either: the same bytes as setting the field and [`to_cbor`].
pub fn encode_reply(reply: &Reply, initial_gestors: &[String]) -> Vec<u8> {
    #[derive(Serialize)]
    struct ReplyRef<'a> {
        v: u32,
        ok: bool,
        body: &'a Value,
        error: &'a Option<HandlerError>,
        initial_gestors: &'a [String],
    }
    to_cbor(&ReplyRef {
        v: reply.v,
        ok: reply.ok,
        body: &reply.body,
        error: &reply.error,
        initial_gestors,
    })
}

/// Deepest nesting of arrays and maps in a request frame or a signal
/// payload; the envelope map itself is level 1. Real bodies use under 8
/// levels; the bound keeps a hostile frame from costing stack.
pub const MAX_DEPTH: usize = 32;

/// Why a frame is not one acceptable CBOR data item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("not CBOR: {0}")]
    Syntax(String),
    #[error("nested deeper than {MAX_DEPTH} levels of arrays and maps")]
    TooDeep,
    #[error("trailing bytes after the CBOR data item: {0}")]
    Trailing(usize),
    #[error("CBOR tag {0} (the protocol uses no tags)")]
    Tag(u64),
}

/// Decode exactly one CBOR data item: no bytes after it, no tags, at most
/// [`MAX_DEPTH`] levels of nesting. Request frames and signal payloads pass
/// here, so clients get one set of rules (docs/PROTOCOL.md section 4).
pub fn decode_item(bytes: &[u8]) -> Result<Value, ItemError> {
    // The headers are walked first: ciborium skips most tags silently and
    // reads bignum tags as integers, and the walk finds where the item ends.
    let len = scan_item(bytes)?;
    if len < bytes.len() {
        return Err(ItemError::Trailing(bytes.len() - len));
    }
    ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH).map_err(|e| match e {
        ciborium::de::Error::RecursionLimitExceeded => ItemError::TooDeep,
        other => ItemError::Syntax(other.to_string()),
    })
}

/// What a header walk is inside of.
enum Open {
    /// A definite array or map: items still expected (a map's pairs count twice).
    Items(u64),
    /// An indefinite array or map, until a break.
    Indefinite,
    /// An indefinite byte or text string's chunks, until a break.
    Chunks,
}

/// Arrays and maps open in a header walk.
fn depth(open: &[Open]) -> usize {
    open.iter().filter(|o| !matches!(o, Open::Chunks)).count()
}

/// One header of a CBOR item: its major type, its argument (`None` for an
/// indefinite length or a break), and the initial byte for messages.
struct Header {
    major: u8,
    arg: Option<u64>,
    initial: u8,
}

/// Read the header at `*pos`, advancing past it.
fn read_header(bytes: &[u8], pos: &mut usize) -> Result<Header, ItemError> {
    let truncated = || ItemError::Syntax("truncated or empty".into());
    let initial = *bytes.get(*pos).ok_or_else(truncated)?;
    let (major, info) = (initial >> 5, initial & 0x1f);
    *pos += 1;
    let arg = match info {
        0..=23 => Some(u64::from(info)),
        24..=27 => {
            let n = 1usize << (info - 24);
            let raw = bytes.get(*pos..*pos + n).ok_or_else(truncated)?;
            *pos += n;
            Some(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
        31 => None,
        _ => {
            return Err(ItemError::Syntax(format!(
                "reserved header byte {initial:#04x}"
            )))
        }
    };
    Ok(Header {
        major,
        arg,
        initial,
    })
}

/// Account for header `h`: skip a string's bytes or open a container.
/// True when `h` completed an item by itself.
fn step(
    h: &Header,
    bytes: &[u8],
    pos: &mut usize,
    open: &mut Vec<Open>,
) -> Result<bool, ItemError> {
    let truncated = || ItemError::Syntax("truncated or empty".into());
    Ok(match (h.major, h.arg) {
        (6, Some(tag)) => return Err(ItemError::Tag(tag)),
        (0 | 1 | 6, None) => {
            return Err(ItemError::Syntax(format!(
                "indefinite length in header byte {:#04x}",
                h.initial
            )))
        }
        (2 | 3, Some(len)) => {
            *pos = usize::try_from(len)
                .ok()
                .and_then(|len| pos.checked_add(len))
                .filter(|&end| end <= bytes.len())
                .ok_or_else(truncated)?;
            true
        }
        (2 | 3, None) => {
            open.push(Open::Chunks);
            false
        }
        // An empty array or map is a level too (the decoder counts it).
        (4 | 5, Some(0)) if depth(open) + 1 > MAX_DEPTH => return Err(ItemError::TooDeep),
        (4 | 5, Some(0)) => true,
        (4 | 5, Some(n)) => {
            let items = if h.major == 5 {
                n.checked_mul(2)
            } else {
                Some(n)
            };
            open.push(Open::Items(items.ok_or_else(truncated)?));
            false
        }
        (4 | 5, None) => {
            open.push(Open::Indefinite);
            false
        }
        (7, None) => match open.pop() {
            Some(Open::Indefinite | Open::Chunks) => true,
            _ => return Err(ItemError::Syntax("unexpected break".into())),
        },
        // Integers, simple values and floats: the header is the item.
        _ => true,
    })
}

/// One item done: count it against the containers it completes. True
/// when that completes the outermost item.
fn complete_item(open: &mut Vec<Open>) -> bool {
    loop {
        match open.last_mut() {
            None => return true,
            Some(Open::Items(left)) => {
                *left -= 1;
                if *left > 0 {
                    return false;
                }
                open.pop();
            }
            Some(Open::Indefinite | Open::Chunks) => return false,
        }
    }
}

/// The length in bytes of the first CBOR item of `bytes`, walking only its
/// headers; refuses tags and nesting beyond [`MAX_DEPTH`]. What the walk
/// does not look at (UTF-8, simple values, chunk types) the decoder checks.
fn scan_item(bytes: &[u8]) -> Result<usize, ItemError> {
    let mut pos = 0usize;
    let mut open: Vec<Open> = Vec::new();
    loop {
        let header = read_header(bytes, &mut pos)?;
        let complete = step(&header, bytes, &mut pos, &mut open)?;
        if depth(&open) > MAX_DEPTH {
            return Err(ItemError::TooDeep);
        }
        if complete && complete_item(&mut open) {
            return Ok(pos);
        }
    }
}

/// The `kind` of a request frame, read from the envelope's headers without
/// decoding it: for routing a frame before paying for its decode (the
/// host's fast path). `None` when it cannot tell cheaply; the full
/// [`decode_request`] is the judge of validity, this only picks a path.
pub fn peek_kind(frame: &[u8]) -> Option<&str> {
    peek_text(frame, &["kind"])
}

/// The text at `path` (map keys, outermost first) in a CBOR frame, found by
/// walking headers only: e.g. `["body", "gestor"]` of a reply. `None` when
/// a step is not a definite-length map of text keys, the key is missing or
/// the value is not a definite text string; never panics on any input.
pub fn peek_text<'a>(frame: &'a [u8], path: &[&str]) -> Option<&'a str> {
    let text_at = |pos: &mut usize| -> Option<&'a str> {
        let h = read_header(frame, pos).ok()?;
        let len = match (h.major, h.arg) {
            (3, Some(len)) => usize::try_from(len).ok()?,
            _ => return None,
        };
        let end = pos.checked_add(len).filter(|&end| end <= frame.len())?;
        let text = std::str::from_utf8(&frame[*pos..end]).ok()?;
        *pos = end;
        Some(text)
    };
    let mut pos = 0usize;
    let (last, maps) = path.split_last()?;
    'outer: for (level, wanted) in maps.iter().chain(std::iter::once(last)).enumerate() {
        let map = read_header(frame, &mut pos).ok()?;
        let pairs = match (map.major, map.arg) {
            (5, Some(n)) => n,
            _ => return None,
        };
        for _ in 0..pairs {
            if text_at(&mut pos)? == *wanted {
                if level + 1 == path.len() {
                    return text_at(&mut pos);
                }
                continue 'outer;
            }
            pos += scan_item(frame.get(pos..)?).ok()?;
        }
        return None;
    }
    None
}

/// A short name of a CBOR value's type, for error messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Integer(i) if i128::from(*i) < 0 => "a negative integer",
        Value::Integer(_) => "an unsigned integer",
        Value::Bytes(_) => "a byte string",
        Value::Float(_) => "a float",
        Value::Text(_) => "a text string",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Tag(..) => "a tag",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        _ => "an unknown CBOR value",
    }
}

/// Decode a request frame the way every endpoint must (docs/PROTOCOL.md
/// section 5): anything that is not exactly a request envelope is
/// `malformed`; a well-formed envelope whose `v` is not
/// [`PROTOCOL_VERSION`] is `bad_request`. The body is left to the handler.
pub fn decode_request(frame: &[u8]) -> Result<Request, HandlerError> {
    let malformed = |why: String| {
        HandlerError::new(
            ErrorCode::Malformed,
            format!("not a CBOR request envelope: {why}"),
        )
    };
    let value = decode_item(frame).map_err(|e| malformed(e.to_string()))?;
    let Value::Map(entries) = value else {
        return Err(malformed(format!("{} instead of a map", type_name(&value))));
    };
    let (mut v, mut kind, mut body) = (None, None, None);
    for (key, val) in entries {
        let Value::Text(key) = key else {
            return Err(malformed(format!(
                "{} as a key; keys are text strings",
                type_name(&key)
            )));
        };
        let slot = match key.as_str() {
            "v" => &mut v,
            "kind" => &mut kind,
            "body" => &mut body,
            // Unknown keys are ignored (section 4).
            _ => continue,
        };
        if slot.is_some() {
            return Err(malformed(format!("key {key:?} appears twice")));
        }
        *slot = Some(val);
    }
    let v = match v {
        None => return Err(malformed("no \"v\"".into())),
        Some(Value::Integer(i)) if i128::from(i) >= 0 => i128::from(i),
        Some(other) => {
            return Err(malformed(format!(
                "\"v\" is {}; it must be an unsigned integer",
                type_name(&other)
            )))
        }
    };
    let kind = match kind {
        None => return Err(malformed("no \"kind\"".into())),
        Some(Value::Text(kind)) => kind,
        Some(other) => {
            return Err(malformed(format!(
                "\"kind\" is {}; it must be a text string",
                type_name(&other)
            )))
        }
    };
    // Only now, so that a broken envelope is malformed whatever its `v`.
    if v != i128::from(PROTOCOL_VERSION) {
        return Err(HandlerError::bad_request(format!(
            "unsupported protocol version {v} (this node speaks {PROTOCOL_VERSION})"
        )));
    }
    Ok(Request {
        v: PROTOCOL_VERSION,
        kind,
        body: body.unwrap_or(Value::Null),
    })
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
    fn item_walk_finds_the_end_and_refuses_what_the_protocol_forbids() {
        // {"a": [1, "xy"]}, an indefinite array [1, 2], an indefinite
        // text string of two chunks.
        let map = [0xa1, 0x61, b'a', 0x82, 0x01, 0x62, b'x', b'y'];
        assert!(decode_item(&map).is_ok());
        assert!(decode_item(&[0x9f, 0x01, 0x02, 0xff]).is_ok());
        assert!(decode_item(&[0x7f, 0x61, b'a', 0x61, b'b', 0xff]).is_ok());
        assert!(matches!(
            decode_item(&[0x01, 0x02]),
            Err(ItemError::Trailing(1))
        ));
        assert!(matches!(decode_item(&[0xc1, 0x01]), Err(ItemError::Tag(1))));
        assert!(matches!(decode_item(&[0xff]), Err(ItemError::Syntax(_))));
        assert!(matches!(decode_item(&[0x1f]), Err(ItemError::Syntax(_))));
        assert!(matches!(decode_item(&[0x1c]), Err(ItemError::Syntax(_))));
        assert!(matches!(
            decode_item(&[0x82, 0x01]),
            Err(ItemError::Syntax(_))
        ));
        assert!(matches!(
            decode_item(&[0x62, b'x']),
            Err(ItemError::Syntax(_))
        ));
        assert!(matches!(decode_item(&[]), Err(ItemError::Syntax(_))));
        let nested = |levels: usize| {
            let mut v = vec![0x81; levels - 1];
            v.push(0x80);
            v
        };
        assert!(decode_item(&nested(MAX_DEPTH)).is_ok());
        assert!(matches!(
            decode_item(&nested(MAX_DEPTH + 1)),
            Err(ItemError::TooDeep)
        ));
        let mut indefinite = vec![0x9f; MAX_DEPTH + 1];
        indefinite.extend(vec![0xff; MAX_DEPTH + 1]);
        assert!(matches!(decode_item(&indefinite), Err(ItemError::TooDeep)));
    }

    #[test]
    fn request_round_trip() {
        let req = Request::new("echo", Value::Text("hi".into()));
        let back: Request = from_cbor(&to_cbor(&req)).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn encode_reply_matches_the_owned_encoding() {
        let list = vec![
            "tcp://127.0.0.1:1".to_string(),
            "tcp://127.0.0.1:2".to_string(),
        ];
        for mut reply in [
            Reply::ok(Value::Text("pong".into())),
            Reply::err(HandlerError::bad_request("no")),
        ] {
            let borrowed = encode_reply(&reply, &list);
            reply.initial_gestors = list.clone();
            assert_eq!(borrowed, to_cbor(&reply));
        }
    }

    #[test]
    fn error_reply_round_trip() {
        let mut reply = Reply::err(HandlerError::new(ErrorCode::NotFound, "no such user"));
        reply.initial_gestors = vec!["tcp://127.0.0.1:1".into()];
        let back: Reply = from_cbor(&to_cbor(&reply)).unwrap();
        assert_eq!(back.error.unwrap().code, ErrorCode::NotFound);
        assert_eq!(back.initial_gestors.len(), 1);
    }

    /// Any kind: the envelope does not care (real names live in gestor-api).
    const KIND: &str = "test.kind";

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn envelope(pairs: Vec<(Value, Value)>) -> Vec<u8> {
        to_cbor(&Value::Map(pairs))
    }

    fn ping_with_v(v: Value) -> Vec<u8> {
        envelope(vec![(text("v"), v), (text("kind"), text(KIND))])
    }

    fn code_of(frame: &[u8]) -> ErrorCode {
        decode_request(frame).expect_err("refused").code
    }

    /// `depth` nested arrays (the innermost empty) as the body of a ping.
    fn ping_nested(depth: usize) -> Vec<u8> {
        let mut body = Value::Array(Vec::new());
        for _ in 1..depth {
            body = Value::Array(vec![body]);
        }
        envelope(vec![
            (text("v"), Value::Integer(1.into())),
            (text("kind"), text(KIND)),
            (text("body"), body),
        ])
    }

    #[test]
    fn a_plain_envelope_decodes() {
        let frame = to_cbor(&Request::new(KIND, Value::Null));
        let req = decode_request(&frame).unwrap();
        assert_eq!((req.v, req.kind.as_str(), req.body), (1, KIND, Value::Null));
        // No body and unknown keys are fine.
        let req = decode_request(&envelope(vec![
            (text("kind"), text("x")),
            (text("extra"), Value::Bool(true)),
            (text("v"), Value::Integer(1.into())),
        ]))
        .unwrap();
        assert_eq!(req.body, Value::Null);
    }

    #[test]
    fn byte_string_keys_and_values_are_malformed() {
        let frame = envelope(vec![
            (Value::Bytes(b"v".to_vec()), Value::Integer(1.into())),
            (text("kind"), text(KIND)),
        ]);
        // ciborium's typed decoding would have taken this.
        assert!(from_cbor::<Request>(&frame).is_ok());
        assert_eq!(code_of(&frame), ErrorCode::Malformed);
        let unknown_bytes_key = envelope(vec![
            (text("v"), Value::Integer(1.into())),
            (text("kind"), text(KIND)),
            (Value::Bytes(b"x".to_vec()), Value::Null),
        ]);
        assert_eq!(code_of(&unknown_bytes_key), ErrorCode::Malformed);
        let bytes_kind = envelope(vec![
            (text("v"), Value::Integer(1.into())),
            (text("kind"), Value::Bytes(KIND.as_bytes().to_vec())),
        ]);
        assert_eq!(code_of(&bytes_kind), ErrorCode::Malformed);
    }

    #[test]
    fn any_unsigned_version_but_1_is_a_bad_request() {
        for v in [0u64, 2, u64::from(u32::MAX) + 1, u64::MAX] {
            let err = decode_request(&ping_with_v(Value::Integer(v.into()))).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "v = {v}");
            assert!(err.message.contains(&v.to_string()), "{}", err.message);
        }
        // Not an unsigned integer at all: the envelope is malformed.
        for v in [
            Value::Integer((-1).into()),
            Value::Float(1.0),
            text("1"),
            Value::Null,
        ] {
            assert_eq!(
                code_of(&ping_with_v(v.clone())),
                ErrorCode::Malformed,
                "{v:?}"
            );
        }
        // A broken envelope is malformed whatever its version.
        let no_kind = envelope(vec![(text("v"), Value::Integer(2.into()))]);
        assert_eq!(code_of(&no_kind), ErrorCode::Malformed);
    }

    #[test]
    fn nesting_is_bounded() {
        // The envelope is level 1, so the body may nest MAX_DEPTH - 1 deep.
        assert!(decode_request(&ping_nested(MAX_DEPTH - 1)).is_ok());
        let err = decode_request(&ping_nested(MAX_DEPTH)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Malformed);
        assert!(
            err.message.contains("nested deeper than"),
            "{}",
            err.message
        );
        // Far deeper, and indefinite-length, costs no stack either.
        let mut deep = vec![0x9f; 100_000];
        deep.extend(vec![0xff; 100_000]);
        assert_eq!(decode_item(&deep), Err(ItemError::TooDeep));
        let mut maps = vec![0xa1, 0x61, 0x6b];
        for _ in 0..40 {
            maps.extend([0xa1, 0x61, 0x6b]);
        }
        assert_eq!(decode_item(&maps), Err(ItemError::TooDeep));
    }

    #[test]
    fn tags_trailing_bytes_and_duplicates_are_malformed() {
        // A tag anywhere, including the bignum form of 1 (tag 2, h'01').
        assert_eq!(decode_item(&[0xc2, 0x41, 0x01]), Err(ItemError::Tag(2)));
        let tagged_v = ping_with_v(Value::Tag(2, Box::new(Value::Bytes(vec![1]))));
        assert_eq!(code_of(&tagged_v), ErrorCode::Malformed);
        let tagged_body = envelope(vec![
            (text("v"), Value::Integer(1.into())),
            (text("kind"), text(KIND)),
            (
                text("body"),
                Value::Tag(0, Box::new(text("2024-01-01T00:00:00Z"))),
            ),
        ]);
        assert_eq!(code_of(&tagged_body), ErrorCode::Malformed);
        let mut two = ping_with_v(Value::Integer(1.into()));
        two.push(0x00);
        let err = decode_request(&two).unwrap_err();
        assert_eq!(err.code, ErrorCode::Malformed);
        assert!(err.message.contains("trailing bytes"), "{}", err.message);
        let twice = envelope(vec![
            (text("v"), Value::Integer(1.into())),
            (text("kind"), text(KIND)),
            (text("v"), Value::Integer(1.into())),
        ]);
        assert_eq!(code_of(&twice), ErrorCode::Malformed);
        for not_a_map in [to_cbor(&Value::Array(vec![])), to_cbor(&text("hi"))] {
            assert_eq!(code_of(&not_a_map), ErrorCode::Malformed);
        }
    }

    #[test]
    fn item_walk_agrees_with_the_decoder_on_odd_but_valid_cbor() {
        // Indefinite-length map, array and chunked text: accepted.
        let frame = [
            0xbf, 0x61, 0x76, 0x01, 0x64, 0x6b, 0x69, 0x6e, 0x64, 0x7f, 0x62, 0x6e, 0x6f, 0x62,
            0x64, 0x65, 0xff, 0x64, 0x62, 0x6f, 0x64, 0x79, 0x9f, 0x01, 0xf9, 0x3c, 0x00, 0xff,
            0xff,
        ];
        let req = decode_request(&frame).unwrap();
        assert_eq!(req.kind, "node");
        assert_eq!(
            req.body,
            Value::Array(vec![Value::Integer(1.into()), Value::Float(1.0)])
        );
        // Truncated items and stray breaks are refused, never a panic.
        for bad in [
            &[0x82, 0x01][..],
            &[0x5a, 0xff, 0xff, 0xff, 0xff],
            &[0xff],
            &[0x1c],
            &[0x7f, 0x61],
            &[0x1f],
            &[0xdf, 0x01],
            &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(decode_item(bad).is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn peek_kind_agrees_with_the_decoder() {
        let frame = to_cbor(&Request::new(
            "demo.peek",
            Value::Map(vec![(text("username"), text("ana"))]),
        ));
        assert_eq!(peek_kind(&frame), Some("demo.peek"));
        // "kind" after other keys, one of them a nested map.
        let later = envelope(vec![
            (
                text("body"),
                Value::Map(vec![(text("kind"), text("decoy"))]),
            ),
            (text("v"), Value::Integer(1.into())),
            (text("kind"), text("demo.later")),
        ]);
        assert_eq!(peek_kind(&later), Some("demo.later"));
        assert_eq!(decode_request(&later).unwrap().kind, "demo.later");
        // Nothing it cannot read cheaply, and never a panic.
        assert_eq!(
            peek_kind(&envelope(vec![(text("v"), Value::Integer(1.into()))])),
            None
        );
        assert_eq!(
            peek_kind(&envelope(vec![(text("kind"), Value::Integer(3.into()))])),
            None
        );
        for cut in 0..frame.len() {
            let _ = peek_kind(&frame[..cut]);
        }
        for garbage in [
            &b""[..],
            &[0xff],
            &[0xa1, 0x64],
            &[0xbf, 0xff],
            &[0x1b, 0xff],
        ] {
            assert_eq!(peek_kind(garbage), None);
        }
        let mut reply = Reply::ok(Value::Map(vec![
            (text("user"), text("ana")),
            (text("gestor"), text("tcp://127.0.0.1:7000")),
        ]));
        reply.initial_gestors = vec!["tcp://127.0.0.1:7001".into()];
        let reply = to_cbor(&reply);
        assert_eq!(
            peek_text(&reply, &["body", "gestor"]),
            Some("tcp://127.0.0.1:7000")
        );
        assert_eq!(peek_text(&reply, &["body", "user"]), Some("ana"));
        assert_eq!(peek_text(&reply, &["body", "nobody"]), None);
        assert_eq!(peek_text(&reply, &["error", "code"]), None);
        assert_eq!(peek_text(&reply, &[]), None);
        for cut in 0..reply.len() {
            let _ = peek_text(&reply[..cut], &["body", "gestor"]);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(from_cbor::<Request>(&[0xff, 0x00, 0x13]).is_err());
        assert!(from_cbor::<Request>(&[]).is_err());
    }
}
