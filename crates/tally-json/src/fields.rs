//! Reading one field's value: ids and integers, booleans, flag names and amount text.
//! Every error names the field by its path in the line (`create_transfers[3].amount`).

use crate::LineError;
use crate::tree::Json;
use std::fmt;

/// JSON integers are exact in every JSON tool only below 2^53 (an IEEE double's
/// mantissa); wider ids and amounts must travel as strings.
pub(crate) const JSON_INT_EXACT_LIMIT: u64 = 1 << 53;

/// Longest piece of client text echoed back in a message, so that a hostile megabyte
/// string does not come back in the answer.
const ECHO_CHARS_MAX: usize = 64;

/// Where a value sits in the line, rendered only when there is an error to report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loc<'a> {
    request: &'static str,
    index: Option<usize>,
    field: Option<&'a str>,
    item: Option<usize>,
}

impl<'a> Loc<'a> {
    pub(crate) fn top(request: &'static str) -> Self {
        Loc {
            request,
            index: None,
            field: None,
            item: None,
        }
    }

    pub(crate) fn at(self, index: usize) -> Self {
        Loc {
            index: Some(index),
            ..self
        }
    }

    pub(crate) fn field(self, field: &'a str) -> Self {
        Loc {
            field: Some(field),
            ..self
        }
    }

    pub(crate) fn item(self, item: usize) -> Self {
        Loc {
            item: Some(item),
            ..self
        }
    }

    /// An error about this location.
    pub(crate) fn error(self, problem: impl fmt::Display) -> LineError {
        LineError(format!("{self}: {problem}"))
    }
}

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.request)?;
        if let Some(index) = self.index {
            write!(f, "[{index}]")?;
        }
        if let Some(field) = self.field {
            write!(f, ".{field}")?;
        }
        if let Some(item) = self.item {
            write!(f, "[{item}]")?;
        }
        Ok(())
    }
}

/// Client text, quoted and escaped, cut to [`ECHO_CHARS_MAX`] characters.
pub(crate) fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_CHARS_MAX) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// Client text without quotes (for a field name), escaped and cut like [`echo`].
pub(crate) fn short(text: &str) -> String {
    let mut shown: String = text
        .chars()
        .take(ECHO_CHARS_MAX)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(ECHO_CHARS_MAX).is_some() {
        shown.push('…');
    }
    shown
}

/// How a field of an unsigned integer type accepts JSON numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    /// u128 / u64 fields: decimal-digit strings; JSON integers only below 2^53.
    Wide,
    /// u32 / u16 fields: JSON integers (decimal-digit strings too).
    Narrow,
}

/// An unsigned integer field of type `T` (named `type_name` in messages).
pub(crate) fn unsigned<T: TryFrom<u128>>(
    value: &Json,
    loc: Loc<'_>,
    type_name: &str,
    width: Width,
) -> Result<T, LineError> {
    let past = |shown: String| loc.error(format!("{shown} is past {type_name}"));
    let wide: u128 = match value {
        Json::Str(text) => digits(text).map_err(|problem| match problem {
            DigitsProblem::Overflow => past(echo(text)),
            DigitsProblem::NotDigits => {
                loc.error(format!("{} is not a string of decimal digits", echo(text)))
            }
        })?,
        Json::Int(number) => {
            if width == Width::Wide && *number >= JSON_INT_EXACT_LIMIT {
                return Err(loc.error(format!(
                    "{number} is a JSON number at or past 2^53, which JSON tools do not keep \
                     exact; give {type_name} values as a string of decimal digits (\"{number}\")"
                )));
            }
            u128::from(*number)
        }
        Json::Neg(number) => return Err(loc.error(format!("{number} is negative"))),
        Json::Float(number) => {
            if number.is_sign_negative() {
                return Err(loc.error(format!("{number:?} is negative")));
            }
            let hint = match width {
                Width::Wide => "a string of decimal digits",
                Width::Narrow => "an integer",
            };
            // serde_json reads integers past u64 as floats: say what went wrong for them.
            let problem = if number.fract() != 0.0 {
                "is not an integer"
            } else if *number >= JSON_INT_EXACT_LIMIT as f64 {
                "is past 2^53, where JSON numbers are not exact"
            } else {
                "is written with a fraction or an exponent (as 1.0 or 1e3)"
            };
            return Err(loc.error(format!(
                "JSON number {number:?} {problem}; give {type_name} values as {hint}"
            )));
        }
        other => {
            let expected = match width {
                Width::Wide => "a string of decimal digits",
                Width::Narrow => "an integer",
            };
            return Err(loc.error(format!("expected {expected}, found {}", other.kind())));
        }
    };
    T::try_from(wide).map_err(|_| past(shown_number(value, wide)))
}

/// The value as the client wrote it, for range messages.
fn shown_number(value: &Json, wide: u128) -> String {
    match value {
        Json::Str(text) => echo(text),
        _ => wide.to_string(),
    }
}

enum DigitsProblem {
    NotDigits,
    Overflow,
}

/// Strictly decimal digits (no sign, space, hex or exponent), at least one, into u128.
fn digits(text: &str) -> Result<u128, DigitsProblem> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DigitsProblem::NotDigits);
    }
    text.bytes().try_fold(0u128, |acc, b| {
        acc.checked_mul(10)
            .and_then(|acc| acc.checked_add(u128::from(b - b'0')))
            .ok_or(DigitsProblem::Overflow)
    })
}

pub(crate) fn boolean(value: &Json, loc: Loc<'_>) -> Result<bool, LineError> {
    match value {
        Json::Bool(flag) => Ok(*flag),
        other => Err(loc.error(format!("expected true or false, found {}", other.kind()))),
    }
}

/// A flag-name array, folded into a set with `with`. `named` is the flag type's
/// name table; an unknown name is an error listing the known ones.
pub(crate) fn flags<F: Copy>(
    value: &Json,
    loc: Loc<'_>,
    named: &[(F, &'static str)],
    empty: F,
    with: impl Fn(F, F) -> F,
) -> Result<F, LineError> {
    let Json::Array(items) = value else {
        return Err(loc.error(format!(
            "expected an array of flag names, found {}",
            value.kind()
        )));
    };
    let known = || {
        named
            .iter()
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut set = empty;
    for (index, item) in items.iter().enumerate() {
        let Json::Str(text) = item else {
            return Err(loc
                .item(index)
                .error(format!("expected a flag name, found {}", item.kind())));
        };
        let Some((flag, _)) = named.iter().find(|(_, name)| name == text) else {
            return Err(loc.item(index).error(format!(
                "unknown flag {}; the flags here are {}",
                echo(text),
                known()
            )));
        };
        set = with(set, *flag);
    }
    Ok(set)
}

/// The decimal text of an amount, before its scale is known. JSON integers below 2^53
/// are taken as their digits; floats are refused, since they cannot carry money exactly.
pub(crate) fn amount_text(value: &Json, loc: Loc<'_>) -> Result<String, LineError> {
    match value {
        Json::Str(text) => Ok(text.clone()),
        Json::Int(number) if *number < JSON_INT_EXACT_LIMIT => Ok(number.to_string()),
        Json::Int(number) => Err(loc.error(format!(
            "{number} is a JSON number at or past 2^53, which JSON tools do not keep exact; \
             give amounts as a decimal string (\"{number}\")"
        ))),
        Json::Neg(number) => Err(loc.error(format!("{number} is negative"))),
        Json::Float(number) if number.is_sign_negative() => {
            Err(loc.error(format!("{number:?} is negative")))
        }
        // An integer past u64 arrives as a float: say what is wrong with it.
        Json::Float(number) if *number >= JSON_INT_EXACT_LIMIT as f64 => Err(loc.error(format!(
            "JSON number {number:?} is at or past 2^53, which JSON tools do not keep exact; \
             give amounts as a decimal string"
        ))),
        Json::Float(number) => Err(loc.error(format!(
            "JSON number {number:?} is a float; give amounts as a decimal string such as \
             \"12.50\" (floating point never touches money)"
        ))),
        other => Err(loc.error(format!(
            "expected a decimal string such as \"12.50\", found {}",
            other.kind()
        ))),
    }
}
