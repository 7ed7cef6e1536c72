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
        loop {
            let index = items.len();
            match seq.next_element() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Json::Array(items)),
                // Only an error already placed inside a member gets the index: one in
                // the array's own syntax is the array's.
                Err(error) => return Err(within(error, &format!("[{index}]"), false)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(RESERVE_MAX));
        while let Some(key) = map.next_key::<String>()? {
            let value = map
                .next_value::<Json>()
                .map_err(|error| within(error, &crate::fields::short(&key), true))?;
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

/// Marks a message that carries the path of the value it is about:
/// `PLACED path PLACED reason`. Never in JSON text a parser reports (a control byte).
const PLACED: char = '\u{1}';

/// `error`, raised while reading the value at `step` (a member's key, or `[i]`), with
/// `step` put in front of its path. An error with no path yet gets one only when
/// `starts_path` (a member's value: a bad number, literal or string there is that
/// field's). serde_json appends the position to every error; only the innermost is kept.
fn within<E: serde::de::Error>(error: E, step: &str, starts_path: bool) -> E {
    let message = error.to_string();
    let (path, reason) = match message
        .strip_prefix(PLACED)
        .and_then(|m| m.split_once(PLACED))
    {
        Some((inner, reason)) if inner.starts_with('[') => (format!("{step}{inner}"), reason),
        Some((inner, reason)) => (format!("{step}.{inner}"), reason),
        None if starts_path => (step.to_string(), message.as_str()),
        None => return error,
    };
    E::custom(format!(
        "{PLACED}{path}{PLACED}{}",
        without_position(reason)
    ))
}

/// `reason` without a trailing " at line L column C" (serde_json adds one again).
fn without_position(reason: &str) -> &str {
    match reason.rfind(" at line ") {
        Some(at) if reason[at..].contains(" column ") => &reason[..at],
        _ => reason,
    }
}

/// Reads one JSON document; trailing non-whitespace is an error. A malformed value
/// inside an object names where it is (`create_accounts[0].id: number out of range`).
pub(crate) fn read(text: &str) -> Result<Json, String> {
    serde_json::from_str(text).map_err(|error: serde_json::Error| {
        let message = error.to_string();
        match message
            .strip_prefix(PLACED)
            .and_then(|m| m.split_once(PLACED))
        {
            Some((path, reason)) => format!("{path}: malformed JSON: {reason}"),
            None => format!("malformed JSON: {message}"),
        }
    })
}
