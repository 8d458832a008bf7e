//! Standard base64 (RFC 4648 section 4), because the crate takes no dependency for 60 lines.
//!
//! Two users: kubeconfig `*-data` fields (PEM bundles that people paste with line breaks, and
//! that some tools write without padding), and HTTP basic auth headers. So `decode` is lenient
//! where the input format is (ASCII whitespace anywhere, padding optional, non-zero trailing
//! bits accepted as Go's non-strict decoder does) and strict about everything else: a wrong
//! character or misplaced padding is an error that names its byte offset, never its content,
//! because the input may be a private key.

use std::fmt;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Marks bytes that are not in the alphabet in `DECODE`.
const INVALID: u8 = 0xff;

/// Reverse of `ALPHABET`, built at compile time.
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Encodes `bytes` with the standard alphabet and `=` padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // chunk.len() + 1 output characters carry data; the rest of the quad is padding.
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard-alphabet base64, padded or not, ignoring ASCII whitespace.
pub fn decode(s: &str) -> Result<Vec<u8>, DecodeError> {
    let input = s.as_bytes();
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    // Up to 24 bits of pending data and how many 6-bit groups are in it.
    let mut acc: u32 = 0;
    let mut groups = 0usize;
    // Offset of the last data character, to blame a dangling single character.
    let mut last_data = 0usize;
    // Number of '=' seen so far; once non-zero only whitespace and more '=' may follow.
    let mut padding = 0usize;

    for (pos, &c) in input.iter().enumerate() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            // Padding may only complete a quad that has 2 or 3 data characters.
            let allowed = match groups {
                2 => 2,
                3 => 1,
                _ => 0,
            };
            if padding >= allowed {
                return Err(DecodeError { position: pos });
            }
            padding += 1;
            continue;
        }
        let v = DECODE[usize::from(c)];
        if v == INVALID || padding > 0 {
            return Err(DecodeError { position: pos });
        }
        acc = (acc << 6) | u32::from(v);
        groups += 1;
        last_data = pos;
        if groups == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
            groups = 0;
        }
    }

    match groups {
        0 => {}
        // One character carries only 6 bits: not even one byte.
        1 => {
            return Err(DecodeError {
                position: last_data,
            })
        }
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => unreachable!("groups is reset at 4"),
    }
    if padding > 0 && padding + groups != 4 {
        // "xx=" without its second '=': the quad is short at the end of the input.
        return Err(DecodeError {
            position: input.len(),
        });
    }
    Ok(out)
}

/// Input that is not base64. Carries only the offset, never the input (it may be a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    position: usize,
}

impl DecodeError {
    /// Byte offset in the input of the first character that cannot be accepted (the input
    /// length when the input ends too early).
    pub fn position(&self) -> usize {
        self.position
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid base64 at byte {}", self.position)
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4648 section 10 test vectors.
    const RFC4648: &[(&str, &str)] = &[
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn encode_rfc4648_vectors() {
        for (plain, encoded) in RFC4648 {
            assert_eq!(encode(plain.as_bytes()), *encoded, "encode({plain:?})");
        }
    }

    #[test]
    fn decode_rfc4648_vectors_padded_and_unpadded() {
        for (plain, encoded) in RFC4648 {
            assert_eq!(
                decode(encoded).unwrap(),
                plain.as_bytes(),
                "decode({encoded:?})"
            );
            let unpadded = encoded.trim_end_matches('=');
            assert_eq!(
                decode(unpadded).unwrap(),
                plain.as_bytes(),
                "decode({unpadded:?})"
            );
        }
    }

    #[test]
    fn decode_accepts_whitespace_anywhere() {
        let cases: &[(&str, &[u8])] = &[
            ("Zm9v\nYmFy\n", b"foobar"),
            ("  Zm9vYmFy  ", b"foobar"),
            ("Z m 9 v", b"foo"),
            ("Zm9vYg=\r\n=", b"foob"),
            ("Zm9v\tYmE=\n", b"fooba"),
            ("\n\n", b""),
        ];
        for (input, want) in cases {
            assert_eq!(decode(input).unwrap(), *want, "decode({input:?})");
        }
    }

    #[test]
    fn round_trip_all_byte_values_and_lengths() {
        let all: Vec<u8> = (0..=255u8).collect();
        for len in 0..all.len() {
            let data = &all[..len];
            assert_eq!(decode(&encode(data)).unwrap(), data, "length {len}");
        }
        assert_eq!(encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn decode_errors_name_the_offending_byte() {
        let cases: &[(&str, usize)] = &[
            ("Zm9v!", 4),            // not in the alphabet
            ("Zm9v-_", 4),           // URL-safe alphabet is not accepted
            ("Zm9vY", 4),            // a lone character carries no whole byte
            ("Zg==Zg==", 4),         // data after padding
            ("Zg===", 4),            // too much padding
            ("Zm9v=", 4),            // padding after a complete quad
            ("=", 0),                // padding only
            ("Zg=", 3),              // incomplete padding: blamed at the end of the input
            ("Zm9vYmFy\n\u{e9}", 9), // non-ASCII
        ];
        for (input, position) in cases {
            let err = decode(input).unwrap_err();
            assert_eq!(err.position(), *position, "decode({input:?})");
            assert_eq!(
                err.to_string(),
                format!("invalid base64 at byte {position}")
            );
        }
    }
}
