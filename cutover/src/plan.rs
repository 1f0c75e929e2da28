//! Which buckets a stage moves.
//!
//! A cohort is a set of buckets, never of single merchants: a merchant
//! lives in a bucket, and a bucket moves with all its merchants.
//! `--cohort P` is cumulative: the first `ceil(P% × buckets)` buckets of a
//! fixed pseudo-random order (a hash of the bucket number), so `5` then
//! `20` leaves 20% of the buckets on the shards, spread over every shard,
//! and planning the same percentage twice gives the same buckets.
//! `--merchants LIST` selects the buckets of those merchants.

use std::collections::BTreeSet;

use shardline_topology::pghash::hash_uint32_extended;
use shardline_topology::{Placement, ShardKey};

use crate::error::CutoverError;

/// Seed of the bucket order; changing it would change every plan.
const ORDER_SEED: u64 = 0x0063_7574_6f76_6572;

/// What a stage moves, as the operator said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// This percentage of all buckets, cumulatively (1 to 100).
    Percent(u8),
    /// The buckets of these merchants.
    Merchants(Vec<ShardKey>),
}

impl Selector {
    /// Parses `--cohort` (a percentage, `%` allowed).
    pub fn percent(text: &str) -> Result<Self, CutoverError> {
        let bad = || CutoverError::Percent {
            value: text.to_string(),
        };
        let n: u8 = text
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| bad())?;
        if !(1..=100).contains(&n) {
            return Err(bad());
        }
        Ok(Self::Percent(n))
    }

    /// Parses `--merchants` (ids separated by commas) as keys of the
    /// placement's key type.
    pub fn merchants(list: &str, placement: &Placement) -> Result<Self, CutoverError> {
        if list.trim().is_empty() {
            return Err(CutoverError::NoMerchants);
        }
        let key_type = placement.key_type();
        let keys = list
            .split(',')
            .map(|item| {
                let item = item.trim();
                let parsed = if item.is_empty() {
                    Err("an empty item".to_string())
                } else {
                    key_type.parse_key(item).map_err(|e| e.to_string())
                };
                parsed.map_err(|cause| CutoverError::MerchantList {
                    list: list.to_string(),
                    item: item.to_string(),
                    key_type: key_type.to_string(),
                    cause,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Merchants(keys))
    }

    /// How the cohort row names it.
    pub fn describe(&self) -> String {
        match self {
            Self::Percent(p) => format!("{p}%"),
            Self::Merchants(keys) => {
                let shown: Vec<String> = keys.iter().take(20).map(|k| k.to_string()).collect();
                let more = keys.len().saturating_sub(20);
                if more > 0 {
                    format!("merchants {} and {more} more", shown.join(","))
                } else {
                    format!("merchants {}", shown.join(","))
                }
            }
        }
    }

    /// Every bucket the selector covers, switched already or not.
    pub fn buckets(&self, placement: &Placement) -> BTreeSet<u32> {
        match self {
            Self::Percent(p) => {
                let n = placement.buckets() as u64;
                let take = (n * u64::from(*p)).div_ceil(100) as usize;
                bucket_order(placement.buckets())
                    .into_iter()
                    .take(take)
                    .collect()
            }
            Self::Merchants(keys) => keys.iter().map(|k| placement.bucket(k)).collect(),
        }
    }
}

/// All buckets in the fixed order percentages take them in.
pub fn bucket_order(buckets: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..buckets).collect();
    order.sort_by_key(|b| (hash_uint32_extended(*b, ORDER_SEED), *b));
    order
}

/// The buckets a stage would move: those the selector covers that the
/// shards do not serve yet, ascending.
pub fn cohort(selector: &Selector, placement: &Placement, on_shards: &BTreeSet<u32>) -> Vec<u32> {
    selector
        .buckets(placement)
        .difference(on_shards)
        .copied()
        .collect()
}

/// The buckets a rollback returns to the monolith, ascending: for
/// `--cohort P` those on the shards beyond the first P% (back to P%), for
/// `--merchants` theirs that are on the shards.
pub fn back(selector: &Selector, placement: &Placement, on_shards: &BTreeSet<u32>) -> Vec<u32> {
    let covered = selector.buckets(placement);
    match selector {
        Selector::Percent(_) => on_shards.difference(&covered).copied().collect(),
        Selector::Merchants(_) => on_shards.intersection(&covered).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_topology::ShardKeyType;

    fn placement() -> Placement {
        Placement::even(ShardKeyType::Bigint, 1024, 4).unwrap()
    }

    #[test]
    fn percentages_are_cumulative_and_deterministic() {
        let p = placement();
        let five = Selector::Percent(5).buckets(&p);
        let twenty = Selector::Percent(20).buckets(&p);
        assert_eq!(five.len(), 52);
        assert_eq!(twenty.len(), 205);
        assert!(five.is_subset(&twenty));
        assert_eq!(five, Selector::Percent(5).buckets(&p));
        assert_eq!(Selector::Percent(100).buckets(&p).len(), 1024);
        // Spread over every shard, not the first shard's range.
        let shards: BTreeSet<usize> = five.iter().map(|b| p.shard_of_bucket(*b)).collect();
        assert_eq!(shards.len(), 4);
    }

    #[test]
    fn a_cohort_leaves_out_buckets_already_on_the_shards() {
        let p = placement();
        let five = Selector::Percent(5).buckets(&p);
        let next = cohort(&Selector::Percent(20), &p, &five);
        assert_eq!(next.len(), 205 - 52);
        assert!(next.iter().all(|b| !five.contains(b)));
        assert!(cohort(&Selector::Percent(5), &p, &five).is_empty());
    }

    #[test]
    fn a_rollback_to_a_percentage_returns_the_buckets_beyond_it() {
        let p = placement();
        let twenty = Selector::Percent(20).buckets(&p);
        let back_to_five = back(&Selector::Percent(5), &p, &twenty);
        assert_eq!(back_to_five.len(), 205 - 52);
        assert_eq!(
            cohort(
                &Selector::Percent(20),
                &p,
                &Selector::Percent(5).buckets(&p)
            ),
            back_to_five
        );
        assert!(back(&Selector::Percent(20), &p, &twenty).is_empty());
    }

    #[test]
    fn merchants_select_their_buckets() {
        let p = placement();
        let s = Selector::merchants("42, 1001,42", &p).unwrap();
        let buckets = s.buckets(&p);
        assert!(buckets.contains(&p.bucket(&ShardKey::Int(42))));
        assert!(buckets.contains(&p.bucket(&ShardKey::Int(1001))));
        assert!(buckets.len() <= 2);
    }

    #[test]
    fn bad_input_is_refused_with_the_value() {
        let p = placement();
        for bad in ["0", "101", "-5", "five", ""] {
            let e = Selector::percent(bad).unwrap_err();
            assert!(matches!(e, CutoverError::Percent { .. }), "{bad}: {e}");
        }
        assert_eq!(Selector::percent("20%").unwrap(), Selector::Percent(20));
        let e = Selector::merchants("42,abc", &p).unwrap_err();
        assert!(e.to_string().contains("\"abc\""), "{e}");
        let e = Selector::merchants("42,,7", &p).unwrap_err();
        assert!(matches!(e, CutoverError::MerchantList { .. }), "{e}");
        assert!(matches!(
            Selector::merchants(" ", &p).unwrap_err(),
            CutoverError::NoMerchants
        ));
    }
}
