//! File names made from ids the node is sent (request_ids, deployment
//! ids). The rule (docs/protocol.md) keeps any id, however hostile, inside
//! its directory: anything outside `[A-Za-z0-9._-]{1,128}` (and `.`/`..`)
//! becomes a sanitized form plus a hash of the original, so two different
//! ids never share files. Any accepted request_id (up to 1 KiB) thus names
//! files of at most 81 bytes plus a prefix and suffix, well under NAME_MAX.

/// The file-name form of `request_id`.
pub fn rid(request_id: &str) -> String {
    let plain = !request_id.is_empty()
        && request_id.len() <= 128
        && request_id != "."
        && request_id != ".."
        && request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        return request_id.to_owned();
    }
    let cleaned: String = request_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{cleaned}-{:016x}", fnv1a(request_id.as_bytes()))
}

/// FNV-1a: tiny, stable across versions and platforms, good enough to keep
/// sanitized names apart (this is not a security boundary; the character
/// filter is).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
