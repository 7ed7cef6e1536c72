//! Ledgers as currencies, and exact conversion between minor units and decimals.
//!
//! A ledger number is read as an ISO 4217 numeric code with that currency's scale
//! (156 = CNY, 2 decimals; 392 = JPY, 0 decimals; ...). Conversion never rounds: a value
//! that needs more fraction digits than the scale, a negative value or a value past
//! `u128` is an error.

pub use rust_decimal::Decimal;
use std::collections::HashMap;
use std::fmt;

/// Most fraction digits a currency may have (10^19 still fits comfortably in u128 maths).
pub const SCALE_MAX: u32 = 18;

/// A currency known to the engine: its ISO 4217 letters and its scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    /// The ledger number: the ISO 4217 numeric code (156 for CNY).
    pub ledger: u32,
    /// The ISO 4217 letters ("CNY").
    pub alpha: &'static str,
    /// Digits after the decimal point in the currency's usual notation.
    pub scale: u32,
}

/// The ISO 4217 currencies Tally knows by default.
pub const ISO_4217_DEFAULTS: &[Currency] = &[
    Currency {
        ledger: 156,
        alpha: "CNY",
        scale: 2,
    },
    Currency {
        ledger: 840,
        alpha: "USD",
        scale: 2,
    },
    Currency {
        ledger: 978,
        alpha: "EUR",
        scale: 2,
    },
    Currency {
        ledger: 826,
        alpha: "GBP",
        scale: 2,
    },
    Currency {
        ledger: 344,
        alpha: "HKD",
        scale: 2,
    },
    Currency {
        ledger: 392,
        alpha: "JPY",
        scale: 0,
    },
    Currency {
        ledger: 410,
        alpha: "KRW",
        scale: 0,
    },
    Currency {
        ledger: 48,
        alpha: "BHD",
        scale: 3,
    },
];

/// Characters of the client's text an [`AmountError`] keeps: a hostile amount of
/// megabytes is named by its start, never echoed whole.
pub const AMOUNT_ECHO_CHARS_MAX: usize = 64;

/// `text` cut to [`AMOUNT_ECHO_CHARS_MAX`] characters, with `…` when it was longer.
fn echoed(text: &str) -> String {
    match text.char_indices().nth(AMOUNT_ECHO_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Why an amount could not be converted exactly. Each carries the amount as given, cut
/// to [`AMOUNT_ECHO_CHARS_MAX`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmountError {
    /// Not a plain decimal number (`"12.50"`).
    Malformed(String),
    /// Below zero.
    Negative(String),
    /// Needs more fraction digits than the ledger's scale.
    TooManyDecimals {
        /// The amount as given.
        text: String,
        /// The ledger's scale.
        scale: u32,
    },
    /// Larger than `u128::MAX` minor units.
    TooLarge(String),
}

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountError::Malformed(text) => write!(f, "\"{text}\" is not a decimal amount"),
            AmountError::Negative(text) => write!(f, "\"{text}\" is negative"),
            AmountError::TooManyDecimals { text, scale } => write!(
                f,
                "\"{text}\" has more than {scale} decimal place(s) for this ledger; amounts are never rounded"
            ),
            AmountError::TooLarge(text) => write!(f, "\"{text}\" is too large for a u128 amount"),
        }
    }
}

impl std::error::Error for AmountError {}

/// Why a currency could not be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// Ledger 0 is reserved: no currency may use it.
    LedgerZero,
    /// The scale is past [`SCALE_MAX`].
    ScaleTooLarge(u32),
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::LedgerZero => f.write_str("ledger 0 is reserved"),
            RegisterError::ScaleTooLarge(scale) => {
                write!(f, "scale {scale} is larger than the maximum {SCALE_MAX}")
            }
        }
    }
}

impl std::error::Error for RegisterError {}

/// Ledger number → scale. Starts with [`ISO_4217_DEFAULTS`]; an embedding application
/// may register more. Unknown ledgers have scale 0.
#[derive(Debug, Clone)]
pub struct CurrencyTable {
    scales: HashMap<u32, u32>,
}

impl Default for CurrencyTable {
    fn default() -> Self {
        let scales = ISO_4217_DEFAULTS
            .iter()
            .map(|currency| (currency.ledger, currency.scale))
            .collect();
        CurrencyTable { scales }
    }
}

impl CurrencyTable {
    /// Registers (or re-registers) the scale of `ledger`.
    pub fn register(&mut self, ledger: u32, scale: u32) -> Result<(), RegisterError> {
        if ledger == 0 {
            return Err(RegisterError::LedgerZero);
        }
        if scale > SCALE_MAX {
            return Err(RegisterError::ScaleTooLarge(scale));
        }
        self.scales.insert(ledger, scale);
        Ok(())
    }

    /// The scale of `ledger`: its registered or ISO 4217 scale, else 0.
    pub fn scale(&self, ledger: u32) -> u32 {
        self.scales.get(&ledger).copied().unwrap_or(0)
    }

    /// `value` in `ledger`'s minor units, exactly ([`decimal_to_minor`] at its scale):
    /// the amount to put in a transfer given in currency units at the API edge.
    pub fn to_minor(&self, ledger: u32, value: Decimal) -> Result<u128, AmountError> {
        decimal_to_minor(value, self.scale(ledger))
    }

    /// `minor` units of `ledger` as a `Decimal` with exactly its scale's digits
    /// ([`minor_to_decimal`]); `None` past `Decimal`'s range.
    pub fn to_decimal(&self, ledger: u32, minor: u128) -> Option<Decimal> {
        minor_to_decimal(minor, self.scale(ledger))
    }

    /// A decimal string (`"12.50"`) in `ledger`'s minor units, exactly ([`parse_amount`]).
    pub fn parse(&self, ledger: u32, text: &str) -> Result<u128, AmountError> {
        parse_amount(text, self.scale(ledger))
    }

    /// `minor` units of `ledger` as a decimal string with its scale's digits
    /// ([`format_amount`]).
    pub fn format(&self, ledger: u32, minor: u128) -> String {
        format_amount(minor, self.scale(ledger))
    }
}

/// Parses a decimal string (`"12.50"`, `"7"`) into minor units at `scale`, exactly.
/// Trailing fraction zeros past the scale are fine (`"12.500"` on scale 2); any other
/// digit past the scale is an error, never a rounding.
pub fn parse_amount(text: &str, scale: u32) -> Result<u128, AmountError> {
    debug_assert!(scale <= SCALE_MAX);
    let malformed = || AmountError::Malformed(echoed(text));
    if let Some(rest) = text.strip_prefix('-') {
        let is_number = !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        return Err(
            if is_number && rest.bytes().any(|b| b != b'0' && b != b'.') {
                AmountError::Negative(echoed(text))
            } else {
                malformed()
            },
        );
    }
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) {
        return Err(malformed());
    }
    if text.contains('.') && fraction.is_empty() {
        return Err(malformed());
    }
    let scale_digits = scale as usize;
    let (kept, dropped) = if fraction.len() > scale_digits {
        fraction.split_at(scale_digits)
    } else {
        (fraction, "")
    };
    if dropped.bytes().any(|b| b != b'0') {
        return Err(AmountError::TooManyDecimals {
            text: echoed(text),
            scale,
        });
    }
    let too_large = || AmountError::TooLarge(echoed(text));
    let mut minor: u128 = 0;
    for digit in whole.bytes().chain(kept.bytes()) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(digit - b'0')))
            .ok_or_else(too_large)?;
    }
    for _ in kept.len()..scale_digits {
        minor = minor.checked_mul(10).ok_or_else(too_large)?;
    }
    Ok(minor)
}

/// Formats minor units with exactly `scale` fraction digits (`1250` at scale 2 → `"12.50"`).
pub fn format_amount(minor: u128, scale: u32) -> String {
    let digits = minor.to_string();
    let scale_digits = scale as usize;
    if scale_digits == 0 {
        return digits;
    }
    let padded = if digits.len() <= scale_digits {
        format!("{}{}", "0".repeat(scale_digits + 1 - digits.len()), digits)
    } else {
        digits
    };
    let (whole, fraction) = padded.split_at(padded.len() - scale_digits);
    format!("{whole}.{fraction}")
}

/// Converts a `rust_decimal::Decimal` into minor units at `scale`, exactly: the same
/// answers as [`parse_amount`] of its text, by integer arithmetic on its mantissa (the
/// text is built only for an error). Negative zero is zero.
pub fn decimal_to_minor(value: Decimal, scale: u32) -> Result<u128, AmountError> {
    debug_assert!(scale <= SCALE_MAX);
    let Ok(mantissa) = u128::try_from(value.mantissa()) else {
        return Err(AmountError::Negative(value.to_string()));
    };
    let value_scale = value.scale();
    if value_scale > scale {
        // At most 28 digits of scale: the divisor fits.
        let divisor = 10u128.pow(value_scale - scale);
        if mantissa % divisor != 0 {
            return Err(AmountError::TooManyDecimals {
                text: value.to_string(),
                scale,
            });
        }
        Ok(mantissa / divisor)
    } else {
        10u128
            .checked_pow(scale - value_scale)
            .and_then(|factor| mantissa.checked_mul(factor))
            .ok_or_else(|| AmountError::TooLarge(value.to_string()))
    }
}

/// Converts minor units into a `Decimal` at `scale`; `None` when the value is past
/// `Decimal`'s 96-bit range (use [`format_amount`] for those).
pub fn minor_to_decimal(minor: u128, scale: u32) -> Option<Decimal> {
    let mantissa = i128::try_from(minor).ok()?;
    Decimal::try_from_i128_with_scale(mantissa, scale).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A registered ledger converts at its scale; an unregistered one at 0; ISO ledgers
    /// at theirs, through the table's own conversions.
    #[test]
    fn a_registered_currency_converts_at_its_scale() {
        let mut table = CurrencyTable::default();
        let value = Decimal::new(12345, 3); // 12.345
        assert!(matches!(
            table.to_minor(999, value),
            Err(AmountError::TooManyDecimals { scale: 0, .. })
        ));
        assert_eq!(table.register(999, 3), Ok(()));
        assert_eq!(table.to_minor(999, value), Ok(12_345));
        assert_eq!(table.to_decimal(999, 12_345), Some(value));
        assert_eq!(table.parse(999, "1.5"), Ok(1_500));
        assert_eq!(table.format(999, 1_500), "1.500");
        assert_eq!(table.to_minor(156, Decimal::new(1250, 2)), Ok(1_250));
        assert!(table.parse(156, "1.005").is_err());
        assert_eq!(table.format(392, 500), "500");
    }

    #[test]
    fn a_refused_amount_is_named_by_its_start() {
        let long = format!("{}.{}", "1".repeat(5_000), "5".repeat(5_000));
        for (text, scale) in [
            (long.clone(), 2),
            (format!("-{long}"), 2),
            (format!("{long}x"), 2),
        ] {
            let message = parse_amount(&text, scale).expect_err("refused").to_string();
            assert!(message.len() < 200, "{message}");
            assert!(
                message.contains(&format!("{}…", "1".repeat(63))),
                "{message}"
            );
        }
        let large = "9".repeat(100);
        let message = parse_amount(&large, 0).expect_err("too large").to_string();
        assert!(
            message.contains("too large") && message.len() < 200,
            "{message}"
        );
        assert_eq!(
            parse_amount("1.234", 2).expect_err("refused").to_string(),
            "\"1.234\" has more than 2 decimal place(s) for this ledger; amounts are never rounded"
        );
    }

    #[test]
    fn exact_conversion_on_the_spec_examples() {
        assert_eq!(parse_amount("12.50", 2), Ok(1250));
        assert_eq!(parse_amount("12.500", 2), Ok(1250));
        assert_eq!(parse_amount("12", 2), Ok(1200));
        assert_eq!(parse_amount("0.01", 2), Ok(1));
        assert_eq!(parse_amount("1000", 0), Ok(1000));
        assert_eq!(parse_amount("1.005", 3), Ok(1005));
        assert!(matches!(
            parse_amount("1.005", 2),
            Err(AmountError::TooManyDecimals { scale: 2, .. })
        ));
        assert!(matches!(
            parse_amount("1.5", 0),
            Err(AmountError::TooManyDecimals { .. })
        ));
        assert!(matches!(
            parse_amount("-1.00", 2),
            Err(AmountError::Negative(_))
        ));
        for bad in [
            "", ".", "1.", ".5", "1e3", "+1", "1.2.3", " 1", "1,00", "0x10", "-",
        ] {
            assert!(
                matches!(parse_amount(bad, 2), Err(AmountError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn u128_edges() {
        let max = u128::MAX.to_string();
        assert_eq!(parse_amount(&max, 0), Ok(u128::MAX));
        assert!(matches!(
            parse_amount(&format!("{max}0"), 0),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            parse_amount(&max, 2),
            Err(AmountError::TooLarge(_))
        ));
        assert_eq!(format_amount(u128::MAX, 0), max);
    }

    #[test]
    fn formatting_uses_exactly_the_scale() {
        assert_eq!(format_amount(1250, 2), "12.50");
        assert_eq!(format_amount(5, 2), "0.05");
        assert_eq!(format_amount(0, 2), "0.00");
        assert_eq!(format_amount(0, 0), "0");
        assert_eq!(format_amount(1, 3), "0.001");
    }

    #[test]
    fn table_defaults_and_registration() {
        let mut table = CurrencyTable::default();
        assert_eq!(table.scale(156), 2);
        assert_eq!(table.scale(392), 0);
        assert_eq!(table.scale(48), 3);
        assert_eq!(table.scale(999), 0);
        table.register(999, 4).expect("valid registration");
        assert_eq!(table.scale(999), 4);
        assert_eq!(table.register(0, 2), Err(RegisterError::LedgerZero));
        assert_eq!(table.register(1, 19), Err(RegisterError::ScaleTooLarge(19)));
    }

    #[test]
    fn decimals_convert_exactly() {
        let d: Decimal = "12.50".parse().expect("decimal");
        assert_eq!(decimal_to_minor(d, 2), Ok(1250));
        let d: Decimal = "1.005".parse().expect("decimal");
        assert!(decimal_to_minor(d, 2).is_err());
        assert!(decimal_to_minor(Decimal::NEGATIVE_ONE, 2).is_err());
        assert_eq!(
            minor_to_decimal(1250, 2).map(|d| d.to_string()),
            Some("12.50".into())
        );
    }

    #[test]
    fn negative_zero_is_zero_as_a_decimal() {
        // A Decimal's sign on zero carries no value; the text "-0" is refused as malformed.
        let mut negative_zero = Decimal::new(0, 2);
        negative_zero.set_sign_negative(true);
        assert!(negative_zero.is_zero() && negative_zero.is_sign_negative());
        assert_eq!(decimal_to_minor(negative_zero, 2), Ok(0));
        assert!(parse_amount("-0", 2).is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(minor in any::<u128>(), scale in 0u32..=SCALE_MAX) {
            prop_assert_eq!(parse_amount(&format_amount(minor, scale), scale), Ok(minor));
        }

        /// The arithmetic conversion answers as parsing the decimal's text did, errors
        /// included, at every scale and sign and for mantissas up to Decimal's 96 bits.
        #[test]
        fn decimal_to_minor_answers_as_parsing_its_text(
            mantissa in any::<i128>(),
            bits in 0u32..=96,
            value_scale in 0u32..=28,
            scale in 0u32..=SCALE_MAX,
        ) {
            let mantissa = mantissa % (1i128 << bits).max(1);
            let value = Decimal::from_i128_with_scale(mantissa, value_scale);
            prop_assume!(!(value.is_zero() && value.is_sign_negative()));
            prop_assert_eq!(
                decimal_to_minor(value, scale),
                parse_amount(&value.to_string(), scale)
            );
        }
    }
}
