//! A JSON tree that keeps what `serde_json::Value` throws away and the parser needs:
//! repeated keys (a field given twice is an error, not "last one wins"), key order (the
//! first bad field in reading order is the one reported) and the JSON number kind
//! (integer, negative integer or float) as `serde_json` saw it.
//!
//! Nesting depth is bounded by `serde_json`'s recursion limit (128), so neither reading
//! nor dropping a hostile line can overflow the stack.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Elements reserved up front at most, whatever a size hint claims.
const RESERVE_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// A non-negative JSON integer that fits u64.
    Int(u64),
    /// A negative JSON integer.
    Neg(i64),
    /// A fraction, an exponent, or an integer past u64 (serde_json reads those as f64).
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    /// Members in input order, repeats kept.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// What this value is, for "expected X, found Y" messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Int(_) | Json::Neg(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Bool(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json, E> {
        Ok(Json::Int(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json, E> {
        // serde_json only calls this for negative literals; stay correct if it ever
        // hands over a non-negative one.
        Ok(match u64::try_from(value) {
            Ok(non_negative) => Json::Int(non_negative),
            Err(_) => Json::Neg(value),
        })
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json, E> {
        Ok(Json::Float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Json, E> {
        Ok(Json::Str(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Json, E> {
        Ok(Json::Str(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(RESERVE_MAX));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(RESERVE_MAX));
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

/// Reads one JSON document; trailing non-whitespace is an error.
pub(crate) fn read(text: &str) -> Result<Json, serde_json::Error> {
    serde_json::from_str(text)
}
