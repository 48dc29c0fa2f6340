//! Writing protobuf by hand, field by field: the flows hot path encodes Hubble messages
//! without building them (see `encode`). Tests decode the result with the generated types.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

/// A varint field (omitted when zero, as proto3 does).
pub fn varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A bool field written even when false (inside wrappers such as `BoolValue`, or flags).
pub fn bool_always(buf: &mut Vec<u8>, tag: u32, value: bool) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(u64::from(value), buf);
}

/// A string or bytes field (omitted when empty).
pub fn bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if !value.is_empty() {
        raw(buf, tag, value);
    }
}

/// A length-delimited field written even when empty (an embedded message already encoded).
pub fn raw(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

/// An embedded message, written by `body` in place (no intermediate buffer).
pub fn message(buf: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, buf);
    // One byte of length is enough for most messages; move the body when it is not.
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = buf.len() - at - 1;
    let width = encoded_len_varint(len as u64);
    if width == 1 {
        buf[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(width);
        encode_varint(len as u64, &mut prefix);
        buf.splice(at..=at, prefix);
    }
}

/// A `google.protobuf.Timestamp` field.
pub fn timestamp(buf: &mut Vec<u8>, tag: u32, unix_ns: u64) {
    message(buf, tag, |buf| {
        varint(buf, 1, unix_ns / 1_000_000_000);
        varint(buf, 2, unix_ns % 1_000_000_000);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_get_a_wider_length() {
        let mut buf = Vec::new();
        message(&mut buf, 1, |buf| bytes(buf, 2, &[7u8; 300]));
        assert_eq!(buf[0], 0x0a);
        let (len, rest) = (u64::from(buf[1] & 0x7f) | (u64::from(buf[2]) << 7), &buf[3..]);
        assert_eq!(len as usize, rest.len());
        assert_eq!(rest.len(), 3 + 300);
    }
}
