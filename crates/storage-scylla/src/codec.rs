//! Conversions between the store traits' values and CQL column values.
//!
//! Owns: the order-preserving mapping of unsigned 64-bit ids onto CQL `bigint`, the
//! account bucket hash, and the JSON encoding of structured values.
//! Must not touch: the network; everything here is pure and unit-tested.

use rookery_storage::StoreError;

/// Number of account partitions per domain. Changing it moves every account to another
/// partition, so it is part of the schema (a new migration would have to copy rows).
pub const ACCOUNT_BUCKETS: u32 = 64;

const SIGN: u64 = 1 << 63;

/// Maps a u64 onto an i64 so that numeric order is kept (`a < b` ⇔ `to_cql(a) < to_cql(b)`).
///
/// Archive ids and offline seqs are microseconds << 12; they pass `i64::MAX` in 2041, after
/// which a plain cast would sort new ids before old ones. Flipping the top bit keeps order
/// for the whole u64 range (CQL `bigint` compares as signed).
pub fn to_cql(v: u64) -> i64 {
    i64::from_be_bytes((v ^ SIGN).to_be_bytes())
}

/// Inverse of [`to_cql`].
pub fn from_cql(v: i64) -> u64 {
    u64::from_be_bytes(v.to_be_bytes()) ^ SIGN
}

/// FNV-1a (32-bit): stable across platforms, releases and processes, unlike std's hasher.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The account partition bucket of a local part.
pub fn account_bucket(localpart: &str) -> i32 {
    // < ACCOUNT_BUCKETS (64), so the conversion cannot fail.
    i32::try_from(fnv1a(localpart.as_bytes()) % ACCOUNT_BUCKETS).unwrap_or(0)
}

/// Every account bucket of a domain, for `list`.
pub fn all_account_buckets() -> impl Iterator<Item = i32> {
    (0..ACCOUNT_BUCKETS).filter_map(|b| i32::try_from(b).ok())
}

/// Seconds or counters stored as `bigint`.
pub fn u64_to_bigint(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} does not fit a CQL bigint")))
}

pub fn bigint_to_u64(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what}: negative value {v}")))
}

pub fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encoding {what}: {e}")))
}

pub fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rookery_storage::{Account, ArchivePrefs, RosterItem, Subscription};

    #[test]
    fn id_mapping_round_trips_and_keeps_order_over_the_whole_range() {
        let samples = [
            0,
            1,
            2,
            (1 << 52) - 1,
            0x7fff_ffff_ffff_fffe,
            i64::MAX as u64,
            1 << 63,
            (1 << 63) + 1,
            0x0123_4567_89ab_cdef,
            // 2026 and 2045 in microseconds << 12.
            1_790_000_000_000_000 << 12,
            2_366_000_000_000_000 << 12,
            u64::MAX - 1,
            u64::MAX,
        ];
        for &v in &samples {
            assert_eq!(from_cql(to_cql(v)), v, "{v:#x}");
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let mapped: Vec<i64> = sorted.iter().map(|&v| to_cql(v)).collect();
        assert!(mapped.windows(2).all(|w| w[0] < w[1]), "{mapped:?}");
        assert_eq!(to_cql(0), i64::MIN);
        assert_eq!(to_cql(u64::MAX), i64::MAX);
    }

    #[test]
    fn account_buckets_are_stable_and_spread() {
        // Fixed values: a change here would strand every stored account.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
        let b = account_bucket("alice");
        assert!((0..64).contains(&b));
        assert_eq!(b, account_bucket("alice"));
        let used: std::collections::BTreeSet<i32> = (0..1000).map(|i| account_bucket(&format!("user{i}"))).collect();
        assert_eq!(used.len(), 64, "1000 names fill all 64 buckets");
        assert_eq!(all_account_buckets().collect::<Vec<_>>(), (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn structured_values_round_trip_through_json() {
        let account = Account {
            credentials: vec![rookery_sasl::StoredCredentials {
                alg: rookery_sasl::HashAlg::Sha256,
                salt: vec![1; 16],
                iterations: 4096,
                stored_key: vec![2; 32],
                server_key: vec![3; 32],
            }],
            created_at: 1_700_000_000,
        };
        let s = to_json("account", &account.credentials).unwrap();
        let back: Vec<rookery_sasl::StoredCredentials> = from_json("account", &s).unwrap();
        assert_eq!(back, account.credentials);

        let item = RosterItem {
            jid: "jürgen@münchen.example".into(),
            name: Some("Ñame 🦀".into()),
            subscription: Subscription::Both,
            ask: true,
            pending_in: Some(b"<presence/>".to_vec()),
            approved: true,
            groups: vec!["Zeta".into(), "a".into()],
            hidden: true,
        };
        assert_eq!(from_json::<RosterItem>("item", &to_json("item", &item).unwrap()).unwrap(), item);
        let prefs = ArchivePrefs {
            default: rookery_storage::ArchiveDefault::Roster,
            always: vec!["a@b".into()],
            never: vec!["c@d/r".into()],
        };
        assert_eq!(from_json::<ArchivePrefs>("prefs", &to_json("prefs", &prefs).unwrap()).unwrap(), prefs);
        let e = from_json::<RosterItem>("roster item", "{not json").unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(ref m) if m.starts_with("roster item")), "{e}");
    }

    #[test]
    fn bigint_conversions_reject_out_of_range_values() {
        assert_eq!(u64_to_bigint("at", 5).unwrap(), 5);
        assert!(u64_to_bigint("at", u64::MAX).is_err());
        assert_eq!(bigint_to_u64("at", 7).unwrap(), 7);
        assert!(matches!(bigint_to_u64("at", -1), Err(StoreError::Corrupt(_))));
    }
}
