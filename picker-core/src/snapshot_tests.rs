use super::*;
// On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
use alloc::string::ToString;
use alloc::vec;
use proptest::prelude::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

pub(crate) fn sample() -> Snapshot {
    let mut a = Endpoint::new("10.0.0.1:8000".parse().unwrap(), Instant::from_millis(1_000));
    a.waiting = 3;
    a.running = 12;
    a.kv_usage = 0.42;
    a.block_size = Some(16);
    a.gpu_blocks = Some(27_000);
    a.models = vec!["meta-llama/Llama-3.1-8B-Instruct".into(), "sql-lora".into()];
    a.lora = Some(LoraState {
        running: vec!["sql-lora".into()],
        waiting: vec![],
        max: 4,
    });
    let mut b = Endpoint::new("[fd00::2]:8000".parse().unwrap(), Instant::from_millis(990));
    b.ready = false;
    b.models = vec!["meta-llama/Llama-3.1-8B-Instruct".into()];
    Snapshot {
        sequence: 7,
        generated_at: Instant::from_millis(1_005),
        endpoints: vec![a, b],
    }
}

#[test]
fn roundtrip() {
    let s = sample();
    let bytes = s.encode().unwrap();
    assert_eq!(&bytes[..4], b"WEPS");
    assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
    assert_eq!(Snapshot::peek_sequence(&bytes), Some(7));
    // The shared model name is stored once.
    let name = b"meta-llama/Llama-3.1-8B-Instruct";
    assert_eq!(bytes.windows(name.len()).filter(|w| w == name).count(), 1);
}

#[test]
fn empty_snapshot_roundtrips() {
    let s = Snapshot::default();
    assert_eq!(Snapshot::decode(&s.encode().unwrap()).unwrap(), s);
}

#[test]
fn corruption_is_rejected() {
    let bytes = sample().encode().unwrap();
    assert_eq!(Snapshot::decode(&bytes[..bytes.len() - 1]), Err(DecodeError::Checksum));
    assert_eq!(Snapshot::decode(b"WEP"), Err(DecodeError::Truncated { offset: 3 }));
    assert_eq!(Snapshot::decode(b"JUNKJUNKJUNK"), Err(DecodeError::BadMagic));
    let mut v2 = bytes.clone();
    v2[4] = 2;
    assert_eq!(Snapshot::decode(&v2), Err(DecodeError::UnsupportedVersion(2)));
    let mut flipped = bytes.clone();
    flipped[30] ^= 1;
    assert_eq!(Snapshot::decode(&flipped), Err(DecodeError::Checksum));
}

/// Re-seal a hand-edited body with a valid checksum, to reach the field validation behind it.
fn reseal(mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(body.len() - 8);
    let sum = xxh64(&body, 0);
    body.extend_from_slice(&sum.to_le_bytes());
    body
}

#[test]
fn field_validation_behind_a_good_checksum() {
    let mut one = Snapshot::default();
    one.endpoints
        .push(Endpoint::new("10.0.0.1:8000".parse().unwrap(), Instant::ZERO));
    let good = one.encode().unwrap();
    // Layout: 28-byte header, no names, endpoint: family@28 ip@29..33 port@33..35 flags@35
    // waiting@36 running@40 kv@44..48 n_models@48 scraped@49..57, then checksum.
    let edit = |at: usize, val: &[u8]| {
        let mut b = good.clone();
        b[at..at + val.len()].copy_from_slice(val);
        Snapshot::decode(&reseal(b))
    };
    assert!(matches!(
        edit(28, &[5]),
        Err(DecodeError::Invalid {
            what: "address family is not 4 or 6",
            ..
        })
    ));
    assert!(matches!(
        edit(33, &[0, 0]),
        Err(DecodeError::Invalid { what: "port 0", .. })
    ));
    assert!(matches!(
        edit(35, &[0x80]),
        Err(DecodeError::Invalid {
            what: "unknown endpoint flags",
            ..
        })
    ));
    assert!(matches!(
        edit(44, &f32::NAN.to_le_bytes()),
        Err(DecodeError::Invalid { .. })
    ));
    assert!(matches!(
        edit(44, &1.5f32.to_le_bytes()),
        Err(DecodeError::Invalid { .. })
    ));
    assert!(matches!(
        edit(48, &[1]),
        Err(DecodeError::Truncated { .. }) | Err(DecodeError::Invalid { .. })
    ));
    assert!(matches!(
        edit(5, &[1]),
        Err(DecodeError::Invalid {
            what: "reserved header flags set",
            ..
        })
    ));
    // Endpoint count larger than the bytes present.
    assert!(matches!(edit(8, &[2, 0]), Err(DecodeError::Truncated { .. })));
    assert!(matches!(
        edit(8, &[0xff, 0xff]),
        Err(DecodeError::TooMany { what: "endpoints" })
    ));
    // Trailing garbage before the checksum.
    let mut longer = good.clone();
    longer.insert(good.len() - 8, 0);
    assert!(matches!(
        Snapshot::decode(&reseal(longer)),
        Err(DecodeError::TrailingBytes { .. })
    ));
    // Duplicate endpoints.
    let mut dup = one.clone();
    dup.endpoints.push(dup.endpoints[0].clone());
    assert!(matches!(
        Snapshot::decode(&dup.encode().unwrap()),
        Err(DecodeError::Invalid {
            what: "duplicate endpoint",
            ..
        })
    ));
}

#[test]
fn encoder_refuses_what_the_decoder_would_refuse() {
    let mut s = sample();
    s.endpoints[0].kv_usage = 1.01;
    assert_eq!(s.encode(), Err(EncodeError::BadField("kv_usage outside [0, 1]")));
    let mut s = sample();
    s.endpoints[0].models.push(String::new());
    assert_eq!(s.encode(), Err(EncodeError::BadName));
    let mut s = sample();
    s.endpoints[0].addr.set_port(0);
    assert_eq!(s.encode(), Err(EncodeError::BadField("port 0")));
}

#[test]
fn endpoint_keys_are_stable_and_distinct() {
    let a: SocketAddr = "10.0.0.1:8000".parse().unwrap();
    let b: SocketAddr = "10.0.0.1:8001".parse().unwrap();
    let c: SocketAddr = "[::ffff:10.0.0.1]:8000".parse().unwrap();
    assert_eq!(endpoint_key(&a), endpoint_key(&"10.0.0.1:8000".parse().unwrap()));
    assert_ne!(endpoint_key(&a), endpoint_key(&b));
    assert_ne!(endpoint_key(&a), endpoint_key(&c));
    // Pinned: the key defines fleet-wide consistent-hash placement and must never change.
    assert_eq!(
        endpoint_key(&a),
        xxh64(&[4, 10, 0, 0, 1, 0x40, 0x1f], ENDPOINT_KEY_SEED)
    );
    let pool = Pool::new(sample());
    assert_eq!(pool.key(0), endpoint_key(&pool.endpoints()[0].addr));
    assert_eq!(pool.position(&pool.endpoints()[1].addr), Some(1));
}

#[test]
fn errors_display() {
    assert_eq!(DecodeError::Checksum.to_string(), "snapshot checksum mismatch");
    assert!(DecodeError::Invalid {
        offset: 3,
        what: "port 0"
    }
    .to_string()
    .contains("byte 3"));
}

fn endpoint_strategy() -> impl Strategy<Value = Endpoint> {
    let name = "[a-z0-9/._-]{1,12}";
    (
        any::<[u8; 4]>(),
        1u16..,
        any::<bool>(),
        any::<u32>(),
        any::<u32>(),
        0f32..=1.0,
        prop::option::of(1u32..),
        prop::option::of(1u32..),
        prop::option::of((
            prop::collection::vec(name, 0..3),
            prop::collection::vec(name, 0..3),
            any::<u16>(),
        )),
        prop::collection::vec(name, 0..4),
        any::<u64>(),
    )
        .prop_map(
            |(ip, port, ready, waiting, running, kv, bs, gb, lora, models, at)| Endpoint {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port),
                ready,
                waiting,
                running,
                kv_usage: kv,
                block_size: bs,
                gpu_blocks: gb,
                lora: lora.map(|(running, waiting, max)| LoraState { running, waiting, max }),
                models,
                scraped_at: Instant::from_millis(at),
            },
        )
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Snapshot::decode(&bytes);
        let _ = Snapshot::peek_sequence(&bytes);
        // Also with a valid header and checksum, so the field decoder sees arbitrary bytes.
        let mut b = Vec::from(&MAGIC[..]);
        b.push(VERSION);
        b.extend_from_slice(&bytes);
        b.extend_from_slice(&[0; 8]);
        let _ = Snapshot::decode(&reseal(b));
    }

    #[test]
    fn encode_decode_roundtrip(eps in prop::collection::vec(endpoint_strategy(), 0..12), seq in any::<u64>(), at in any::<u64>()) {
        let mut s = Snapshot { sequence: seq, generated_at: Instant::from_millis(at), endpoints: vec![] };
        for e in eps {
            if !s.endpoints.iter().any(|x| x.addr == e.addr) {
                s.endpoints.push(e);
            }
        }
        let bytes = s.encode().unwrap();
        prop_assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
    }

    /// Any single-byte change to an encoded snapshot is rejected (checksum) or decodes to a
    /// snapshot that re-encodes to exactly those bytes: nothing is silently misread.
    #[test]
    fn mutations_never_misread(eps in prop::collection::vec(endpoint_strategy(), 1..4), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut s = Snapshot::default();
        for e in eps {
            if !s.endpoints.iter().any(|x| x.addr == e.addr) {
                s.endpoints.push(e);
            }
        }
        let mut bytes = s.encode().unwrap();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        if let Ok(d) = Snapshot::decode(&bytes) {
            prop_assert_eq!(d.encode().unwrap(), bytes);
        }
    }
}

/// The checked-in v1 sample (also the snapshot fuzz seed) must keep decoding to `sample()`:
/// a guard against accidental wire-format changes. Regenerate only with a version bump:
/// `UPDATE_GOLDEN=1 cargo test -p picker-core checked_in_v1`.
#[test]
#[cfg_attr(target_family = "wasm", ignore = "no filesystem under the WASI test runner")]
fn checked_in_v1_sample_still_decodes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/snapshot/v1-sample.bin");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, sample().encode().unwrap()).unwrap();
    }
    let bytes = std::fs::read(path).expect("fuzz/corpus/snapshot/v1-sample.bin exists");
    assert_eq!(Snapshot::decode(&bytes).unwrap(), sample());
}
