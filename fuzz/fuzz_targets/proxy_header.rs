//! Arbitrary bytes: the PROXY header parser must never panic, and must keep the contract
//! the listener's reader relies on (`herdgate_core::proxy_protocol`):
//!
//! - `Done { consumed }`: `consumed` is within the input and within `MAX_HEADER`; the
//!   header alone gives the same answer (nothing past it was looked at); every shorter
//!   prefix of it is `Incomplete` (so a reader that consumes what `Incomplete` saw never
//!   reads past the header).
//! - `Incomplete`: fewer than `MAX_HEADER` bytes, and every prefix is `Incomplete` too.
//! - `Err`: longer input stays an error.
#![no_main]

use herdgate_core::proxy_protocol::{parse, Parsed, MAX_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Half the inputs start with a valid v2 signature or v1 prefix, so the fuzzer
    // explores past it quickly.
    let owned;
    let data = match data.split_first() {
        Some((&0, rest)) => {
            owned = [&herdgate_core::proxy_protocol::V2_SIGNATURE[..], rest].concat();
            &owned[..]
        }
        Some((&1, rest)) => {
            owned = [&b"PROXY "[..], rest].concat();
            &owned[..]
        }
        _ => data,
    };
    match parse(data) {
        Ok(Parsed::Done { client, consumed }) => {
            assert!(consumed > 0 && consumed <= data.len() && consumed <= MAX_HEADER);
            assert_eq!(
                parse(&data[..consumed]),
                Ok(Parsed::Done { client, consumed })
            );
            for k in 0..consumed {
                assert_eq!(parse(&data[..k]), Ok(Parsed::Incomplete), "prefix {k}");
            }
        }
        Ok(Parsed::Incomplete) => {
            assert!(data.len() < MAX_HEADER);
            for k in 0..data.len() {
                assert_eq!(parse(&data[..k]), Ok(Parsed::Incomplete), "prefix {k}");
            }
        }
        Err(e) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\0");
            assert_eq!(parse(&longer), Err(e));
        }
    }
});
