//! CBOR values to JSON and back, for `--json` output and `gestor call --body`.

use gestor_sdk::Value;
use serde_json::Value as Json;

pub fn cbor_to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Integer(i) => {
            let n: i128 = (*i).into();
            if let Ok(u) = u64::try_from(n) {
                Json::from(u)
            } else if let Ok(s) = i64::try_from(n) {
                Json::from(s)
            } else {
                Json::String(n.to_string())
            }
        }
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::Text(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        Value::Array(a) => Json::Array(a.iter().map(cbor_to_json).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Text(s) => s.clone(),
                        other => cbor_to_json(other).to_string(),
                    };
                    (key, cbor_to_json(v))
                })
                .collect(),
        ),
        Value::Tag(_, inner) => cbor_to_json(inner),
        _ => Json::Null,
    }
}

pub fn json_to_cbor(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::Integer(u.into())
            } else if let Some(i) = n.as_i64() {
                Value::Integer(i.into())
            } else {
                Value::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(json_to_cbor).collect()),
        Json::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::Text(k.clone()), json_to_cbor(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_structure_and_big_integers() {
        let j: Json = serde_json::json!({"a": [1, -2, true, null], "b": "x", "big": u64::MAX});
        assert_eq!(cbor_to_json(&json_to_cbor(&j)), j);
    }
}
