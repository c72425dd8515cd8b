//! Field values and timestamps: exact short-decimal fast paths, then the
//! standard library's parser.

use super::*;

pub(super) fn parse_value(key: &[u8], v: &[u8], column: usize) -> Result<f64, LineError> {
    let invalid = || LineError::InvalidFieldValue {
        key: quote(key),
        value: quote(v),
        column,
    };
    let out_of_range = || LineError::NumberOutOfRange {
        key: quote(key),
        value: quote(v),
        column,
    };
    // The common case first: a short decimal is a valid float, whatever
    // the checks below would say.
    if let Some(x) = short_decimal(v) {
        return Ok(x);
    }
    let Some(&last) = v.last() else {
        return Err(LineError::EmptyFieldValue {
            key: quote(key),
            column,
        });
    };
    if v[0] == b'"' {
        return Err(LineError::StringField {
            key: quote(key),
            column,
        });
    }
    match v {
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => return Ok(1.0),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => return Ok(0.0),
        _ => {}
    }
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    // All checked bytes are ASCII, so the `from_utf8`s below cannot fail.
    fn text(s: &[u8]) -> &str {
        std::str::from_utf8(s).unwrap_or_default()
    }
    match last {
        b'i' => {
            let body = &v[..v.len() - 1];
            let unsigned = body.strip_prefix(b"-").unwrap_or(body);
            if !digits(unsigned) {
                return Err(invalid());
            }
            text(body)
                .parse::<i64>()
                .map(|n| n as f64)
                .map_err(|_| out_of_range())
        }
        b'u' => {
            let body = &v[..v.len() - 1];
            if !digits(body) {
                return Err(invalid());
            }
            text(body)
                .parse::<u64>()
                .map(|n| n as f64)
                .map_err(|_| out_of_range())
        }
        _ => {
            let ok_chars = v
                .iter()
                .all(|&b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
            let first_ok = v[0].is_ascii_digit() || matches!(v[0], b'-' | b'+' | b'.');
            if !ok_chars || !first_ok || !v.iter().any(u8::is_ascii_digit) {
                return Err(invalid());
            }
            let x: f64 = text(v).parse().map_err(|_| invalid())?;
            if x.is_finite() {
                Ok(x)
            } else {
                Err(out_of_range())
            }
        }
    }
}

/// `[+-]digits[.digits]` with at most 15 significant digits (most sensor
/// values), as the exact `f64` that `str::parse` gives, without its general
/// algorithm: the digits as an integer `m < 2^53` and `10^k` (`k ≤ 15`) are
/// both exact in `f64`, so the one rounding of `m / 10^k` is the correctly
/// rounded value of the decimal. `None` for anything else.
pub(super) fn short_decimal(v: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, body) = match v.first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v),
    };
    if body.len() > 16 {
        return None;
    }
    let mut m: u64 = 0;
    let mut digits = 0;
    let mut scale = None;
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b'.' if scale.is_none() => scale = Some(body.len() - 1 - i),
            _ => return None,
        }
    }
    if digits == 0 || digits > 15 {
        return None;
    }
    let x = m as f64 / POW10[scale.unwrap_or(0)];
    Some(if negative { -x } else { x })
}

pub(super) fn parse_timestamp(
    t: &[u8],
    column: usize,
    precision: Precision,
) -> Result<i64, LineError> {
    let (negative, unsigned) = match t.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    // Up to 19 digits fit in a `u64` (10^19 − 1 < 2^64): no overflow to
    // check while accumulating, eight digits at a time.
    if (1..=19).contains(&unsigned.len()) {
        let Some(n) = digits_u64(unsigned) else {
            return Err(LineError::InvalidTimestamp {
                value: quote(t),
                column,
            });
        };
        let n = if negative {
            // i64::MIN has no positive counterpart: −2^63 wraps to itself.
            (n <= 1 << 63).then(|| (n as i64).wrapping_neg())
        } else {
            i64::try_from(n).ok()
        };
        return n
            .and_then(|n| n.checked_mul(precision.nanos()))
            .ok_or_else(|| LineError::TimestampOutOfRange {
                value: quote(t),
                precision,
                column,
            });
    }
    parse_timestamp_long(t, negative, unsigned, column, precision)
}

/// `s` (1 to 19 ASCII digits) as a number; `None` if any byte is not a
/// digit.
pub(super) fn digits_u64(s: &[u8]) -> Option<u64> {
    let (head, chunks) = s.split_at(s.len() % 8);
    let mut n: u64 = 0;
    for &b in head {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n * 10 + u64::from(d);
    }
    for chunk in chunks.chunks_exact(8) {
        n = n * 100_000_000 + eight_digits(chunk.try_into().ok()?)?;
    }
    Some(n)
}

/// Eight ASCII digits (the first the most significant) as a number, SWAR;
/// `None` if any byte is not a digit.
fn eight_digits(chunk: [u8; 8]) -> Option<u64> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    let v = u64::from_le_bytes(chunk);
    // Every byte 0x30..=0x3F, and 0x30..=0x39 once 6 is added.
    if (v & HIGH) | ((v.wrapping_add(0x0606_0606_0606_0606) & HIGH) >> 4) != 0x3333_3333_3333_3333 {
        return None;
    }
    let v = v - ZEROS;
    let v = (v.wrapping_mul(10) + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((v.wrapping_mul(10_000) + (v >> 32)) & 0xFFFF_FFFF)
}

/// [`parse_timestamp`] past 19 digits (leading zeros), or without any.
fn parse_timestamp_long(
    t: &[u8],
    negative: bool,
    unsigned: &[u8],
    column: usize,
    precision: Precision,
) -> Result<i64, LineError> {
    if unsigned.is_empty() || !unsigned.iter().all(u8::is_ascii_digit) {
        return Err(LineError::InvalidTimestamp {
            value: quote(t),
            column,
        });
    }
    let out_of_range = || LineError::TimestampOutOfRange {
        value: quote(t),
        precision,
        column,
    };
    // Accumulated negatively: i64::MIN has no positive counterpart.
    let mut n: i64 = 0;
    for &b in unsigned {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_sub(i64::from(b - b'0')))
            .ok_or_else(out_of_range)?;
    }
    let n = if negative {
        n
    } else {
        n.checked_neg().ok_or_else(out_of_range)?
    };
    n.checked_mul(precision.nanos()).ok_or_else(out_of_range)
}
