//! Placement: shard key → PostgreSQL hash → bucket → shard.
//!
//! A key is hashed with the function PostgreSQL's own hash partitioning uses
//! for its type, combined as a one-column partition key, and taken modulo the
//! bucket count. A bucket map then assigns each bucket to exactly one shard;
//! moving buckets is how shards are added later without rehashing keys.
//! Because the hash is PostgreSQL's, [`Placement::bucket_sql`] computes the
//! same bucket inside any PostgreSQL server.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::pghash::{self, HASH_COMBINE64_CONSTANT, HASH_PARTITION_SEED};

/// Default number of buckets: enough to spread merchants evenly over up to a
/// few hundred shards, and a power of two so the bucket is a bit mask of the
/// hash both in Rust and in SQL.
pub const DEFAULT_BUCKETS: u32 = 1024;

/// The PostgreSQL types a shard key may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardKeyType {
    Bigint,
    Integer,
    Smallint,
    Text,
    Uuid,
}

impl ShardKeyType {
    /// The type's name as PostgreSQL's catalog prints it (`format_type`).
    pub fn sql_name(self) -> &'static str {
        match self {
            Self::Bigint => "bigint",
            Self::Integer => "integer",
            Self::Smallint => "smallint",
            Self::Text => "text",
            Self::Uuid => "uuid",
        }
    }

    /// The extended hash function PostgreSQL's hash partitioning uses.
    pub fn hash_function(self) -> &'static str {
        match self {
            Self::Bigint => "hashint8extended",
            Self::Integer => "hashint4extended",
            Self::Smallint => "hashint2extended",
            Self::Text => "hashtextextended",
            Self::Uuid => "uuid_hash_extended",
        }
    }

    /// Whether a column of catalog type `sql_type` can hold this key type.
    /// varchar and char(n) hash as text does, so they count as text keys.
    pub fn matches_catalog_type(self, sql_type: &str) -> bool {
        let t = sql_type.to_ascii_lowercase();
        match self {
            Self::Text => t == "text" || t.starts_with("character varying") || t == "name",
            other => t == other.sql_name(),
        }
    }

    /// Parses a key written by a person (`shardline route 42`).
    pub fn parse_key(self, text: &str) -> Result<ShardKey, PlacementError> {
        let bad = |why: &str| PlacementError::BadKey {
            key: text.to_string(),
            key_type: self,
            why: why.to_string(),
        };
        match self {
            Self::Bigint => text
                .trim()
                .parse::<i64>()
                .map(ShardKey::Int)
                .map_err(|e| bad(&e.to_string())),
            Self::Integer => text
                .trim()
                .parse::<i32>()
                .map(|v| ShardKey::Int(v.into()))
                .map_err(|e| bad(&e.to_string())),
            Self::Smallint => text
                .trim()
                .parse::<i16>()
                .map(|v| ShardKey::Int(v.into()))
                .map_err(|e| bad(&e.to_string())),
            Self::Text => Ok(ShardKey::Text(text.to_string())),
            Self::Uuid => uuid::Uuid::parse_str(text.trim())
                .map(|u| ShardKey::Uuid(*u.as_bytes()))
                .map_err(|e| bad(&e.to_string())),
        }
    }

    /// Hashes a key from its PostgreSQL binary representation (a field of a
    /// binary COPY row, or a binary bind parameter), without decoding it.
    pub fn hash_binary(self, field: &[u8]) -> Result<u64, PlacementError> {
        let wrong = || PlacementError::BadBinary {
            key_type: self,
            len: field.len(),
        };
        Ok(match self {
            Self::Bigint => pghash::hashint8extended(
                i64::from_be_bytes(field.try_into().map_err(|_| wrong())?),
                HASH_PARTITION_SEED,
            ),
            Self::Integer => pghash::hashint4extended(
                i32::from_be_bytes(field.try_into().map_err(|_| wrong())?),
                HASH_PARTITION_SEED,
            ),
            Self::Smallint => pghash::hashint4extended(
                i16::from_be_bytes(field.try_into().map_err(|_| wrong())?).into(),
                HASH_PARTITION_SEED,
            ),
            Self::Text => pghash::hash_bytes_extended(field, HASH_PARTITION_SEED),
            Self::Uuid => {
                if field.len() != 16 {
                    return Err(wrong());
                }
                pghash::hash_bytes_extended(field, HASH_PARTITION_SEED)
            }
        })
    }
}

impl FromStr for ShardKeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bigint" | "int8" => Ok(Self::Bigint),
            "integer" | "int" | "int4" => Ok(Self::Integer),
            "smallint" | "int2" => Ok(Self::Smallint),
            "text" | "varchar" | "character varying" => Ok(Self::Text),
            "uuid" => Ok(Self::Uuid),
            other => Err(format!(
                "unsupported shard key type {other:?}; use bigint, integer, smallint, text or uuid"
            )),
        }
    }
}

impl fmt::Display for ShardKeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// A shard key value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ShardKey {
    /// bigint, integer or smallint: integers hash alike across widths.
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
}

impl ShardKey {
    fn hash(&self, key_type: ShardKeyType) -> u64 {
        match (self, key_type) {
            (Self::Int(v), ShardKeyType::Bigint) => {
                pghash::hashint8extended(*v, HASH_PARTITION_SEED)
            }
            // Narrower integers were range-checked on parse; hashint2 and
            // hashint4 both hash the value widened to int4.
            (Self::Int(v), _) => pghash::hashint4extended(*v as i32, HASH_PARTITION_SEED),
            (Self::Text(s), _) => pghash::hash_bytes_extended(s.as_bytes(), HASH_PARTITION_SEED),
            (Self::Uuid(u), _) => pghash::hash_bytes_extended(u, HASH_PARTITION_SEED),
        }
    }
}

impl fmt::Display for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(v) => write!(f, "{v}"),
            Self::Text(s) => f.write_str(s),
            Self::Uuid(u) => write!(f, "{}", uuid::Uuid::from_bytes(*u)),
        }
    }
}

/// Errors of placement: keys that cannot be hashed and bucket maps that do
/// not cover every bucket exactly once.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum PlacementError {
    #[error("{key:?} is not a valid {key_type} shard key: {why}")]
    BadKey {
        key: String,
        key_type: ShardKeyType,
        why: String,
    },
    #[error("a binary {key_type} shard key cannot be {len} bytes long")]
    BadBinary { key_type: ShardKeyType, len: usize },
    #[error("bucket count {0} must be a power of two between 1 and 65536")]
    BadBucketCount(u32),
    #[error("bucket range {range:?} of shard {shard} is not of the form \"FIRST-LAST\" within 0..{buckets}")]
    BadRange {
        shard: usize,
        range: String,
        buckets: u32,
    },
    #[error("bucket {bucket} is assigned to both shard {first} and shard {second}")]
    Overlap {
        bucket: u32,
        first: usize,
        second: usize,
    },
    #[error("buckets {first}-{last} are assigned to no shard")]
    Gap { first: u32, last: u32 },
    #[error("bucket_ranges lists {ranges} shards but the context has {shards}")]
    RangeCount { ranges: usize, shards: usize },
}

/// Where keys live: key type, bucket count and bucket → shard map.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    key_type: ShardKeyType,
    buckets: u32,
    shard_of_bucket: Vec<u16>,
    shards: usize,
}

impl Placement {
    /// Spreads the buckets evenly over `shards` in contiguous ranges.
    pub fn even(
        key_type: ShardKeyType,
        buckets: u32,
        shards: usize,
    ) -> Result<Self, PlacementError> {
        check_bucket_count(buckets)?;
        let shards = shards.max(1);
        let shard_of_bucket = (0..buckets)
            .map(|b| (u64::from(b) * shards as u64 / u64::from(buckets)) as u16)
            .collect();
        Ok(Self {
            key_type,
            buckets,
            shard_of_bucket,
            shards,
        })
    }

    /// Builds the map from one range list per shard, such as
    /// `["0-511", "512-767,1000-1023", "768-999"]`. Every bucket must belong
    /// to exactly one shard: a gap or an overlap is an error.
    pub fn from_ranges(
        key_type: ShardKeyType,
        buckets: u32,
        ranges: &[String],
    ) -> Result<Self, PlacementError> {
        check_bucket_count(buckets)?;
        let mut owner: Vec<Option<u16>> = vec![None; buckets as usize];
        for (shard, list) in ranges.iter().enumerate() {
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let range = parse_range(part, buckets).ok_or_else(|| PlacementError::BadRange {
                    shard,
                    range: part.to_string(),
                    buckets,
                })?;
                for bucket in range {
                    if let Some(first) = owner[bucket as usize] {
                        return Err(PlacementError::Overlap {
                            bucket,
                            first: first.into(),
                            second: shard,
                        });
                    }
                    owner[bucket as usize] = Some(shard as u16);
                }
            }
        }
        if let Some(first) = owner.iter().position(Option::is_none) {
            let last = owner[first..].iter().take_while(|o| o.is_none()).count() + first - 1;
            return Err(PlacementError::Gap {
                first: first as u32,
                last: last as u32,
            });
        }
        Ok(Self {
            key_type,
            buckets,
            shard_of_bucket: owner.into_iter().map(|o| o.unwrap_or_default()).collect(),
            shards: ranges.len(),
        })
    }

    pub fn key_type(&self) -> ShardKeyType {
        self.key_type
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    pub fn shard_count(&self) -> usize {
        self.shards
    }

    /// The bucket of a hash computed by PostgreSQL's extended hash function.
    pub fn bucket_of_hash(&self, hash: u64) -> u32 {
        (pghash::hash_combine64(0, hash) & u64::from(self.buckets - 1)) as u32
    }

    pub fn bucket(&self, key: &ShardKey) -> u32 {
        self.bucket_of_hash(key.hash(self.key_type))
    }

    pub fn shard_of_bucket(&self, bucket: u32) -> usize {
        self.shard_of_bucket[bucket as usize].into()
    }

    pub fn shard(&self, key: &ShardKey) -> usize {
        self.shard_of_bucket(self.bucket(key))
    }

    /// The shard of a key given in PostgreSQL's binary representation.
    pub fn shard_of_binary(&self, field: &[u8]) -> Result<usize, PlacementError> {
        Ok(self.shard_of_bucket(self.bucket_of_hash(self.key_type.hash_binary(field)?)))
    }

    /// The buckets a shard owns, as inclusive ranges in ascending order.
    pub fn ranges_of_shard(&self, shard: usize) -> Vec<RangeInclusive<u32>> {
        let mut out: Vec<RangeInclusive<u32>> = Vec::new();
        for bucket in (0..self.buckets).filter(|&b| self.shard_of_bucket(b) == shard) {
            match out.last_mut() {
                Some(r) if *r.end() + 1 == bucket => *r = *r.start()..=bucket,
                _ => out.push(bucket..=bucket),
            }
        }
        out
    }

    /// A SQL expression computing the bucket of `column` inside PostgreSQL,
    /// equal to [`Placement::bucket`] for every value.
    ///
    /// For a power-of-two bucket count the modulus is a bit mask, so the
    /// 64-bit `hash_combine64` addition can be done on the low bits only and
    /// never overflows int8 arithmetic.
    pub fn bucket_sql(&self, column: &str) -> String {
        let mask = self.buckets - 1;
        let offset = HASH_COMBINE64_CONSTANT & u64::from(mask);
        format!(
            "((({hash}({column}, {seed}) & {mask}) + {offset}) & {mask})",
            hash = self.key_type.hash_function(),
            seed = HASH_PARTITION_SEED as i64,
        )
    }

    /// A SQL condition true when `column`'s bucket belongs to `shard`.
    pub fn owned_by_shard_sql(&self, column: &str, shard: usize) -> String {
        let bucket = self.bucket_sql(column);
        let ranges = self.ranges_of_shard(shard);
        if ranges.is_empty() {
            return "false".to_string();
        }
        let parts: Vec<String> = ranges
            .iter()
            .map(|r| format!("{bucket} BETWEEN {} AND {}", r.start(), r.end()))
            .collect();
        format!("({})", parts.join(" OR "))
    }
}

fn check_bucket_count(buckets: u32) -> Result<(), PlacementError> {
    if buckets == 0 || buckets > 65536 || !buckets.is_power_of_two() {
        return Err(PlacementError::BadBucketCount(buckets));
    }
    Ok(())
}

fn parse_range(part: &str, buckets: u32) -> Option<RangeInclusive<u32>> {
    let (first, last) = match part.split_once('-') {
        Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
        None => {
            let v = part.parse::<u32>().ok()?;
            (v, v)
        }
    };
    (first <= last && last < buckets).then_some(first..=last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_gives_contiguous_ranges() {
        let p = Placement::even(ShardKeyType::Bigint, 1024, 4).unwrap();
        assert_eq!(p.ranges_of_shard(0), vec![0..=255]);
        assert_eq!(p.ranges_of_shard(3), vec![768..=1023]);
        assert_eq!(p.shard_of_bucket(256), 1);
    }

    #[test]
    fn ranges_must_cover_every_bucket_once() {
        let ranges = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = Placement::from_ranges(ShardKeyType::Bigint, 16, &ranges(&["0-3,12-15", "4-11"]))
            .unwrap();
        assert_eq!(p.shard_of_bucket(13), 0);
        assert_eq!(p.ranges_of_shard(0), vec![0..=3, 12..=15]);
        assert_eq!(
            Placement::from_ranges(ShardKeyType::Bigint, 16, &ranges(&["0-8", "8-15"])),
            Err(PlacementError::Overlap {
                bucket: 8,
                first: 0,
                second: 1
            })
        );
        assert_eq!(
            Placement::from_ranges(ShardKeyType::Bigint, 16, &ranges(&["0-7", "10-15"])),
            Err(PlacementError::Gap { first: 8, last: 9 })
        );
        assert!(matches!(
            Placement::from_ranges(ShardKeyType::Bigint, 16, &ranges(&["0-16"])),
            Err(PlacementError::BadRange { .. })
        ));
        assert_eq!(
            Placement::even(ShardKeyType::Bigint, 1000, 2),
            Err(PlacementError::BadBucketCount(1000))
        );
    }

    #[test]
    fn binary_and_parsed_keys_agree() {
        let p = Placement::even(ShardKeyType::Bigint, 1024, 4).unwrap();
        for v in [0i64, -1, 42, i64::MIN, i64::MAX] {
            let key = ShardKeyType::Bigint.parse_key(&v.to_string()).unwrap();
            assert_eq!(p.shard_of_binary(&v.to_be_bytes()).unwrap(), p.shard(&key));
        }
        let p = Placement::even(ShardKeyType::Smallint, 1024, 4).unwrap();
        let key = ShardKeyType::Smallint.parse_key("-7").unwrap();
        assert_eq!(
            p.shard_of_binary(&(-7i16).to_be_bytes()).unwrap(),
            p.shard(&key)
        );
        assert!(ShardKeyType::Smallint.parse_key("70000").is_err());
        assert!(p.shard_of_binary(&[1, 2, 3]).is_err());
    }
}
