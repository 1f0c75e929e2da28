//! Aggregates re-aggregated over shards: each shard computes count, sum,
//! min or max over its rows (per group when grouped), and the router
//! combines the partial results into the row one database would have
//! returned, with the same output type and the same text or binary
//! encoding.
//!
//! count is bigint and summed exactly; sum keeps PostgreSQL's result
//! type (bigint for int2/int4, numeric for int8 and numeric, float for
//! floats); min and max keep the winning shard's bytes. Groups are keyed
//! by their value, not their bytes, where those differ (`1.0` and `1.00`
//! are one numeric group, `-0` and `0` one float group).

use std::collections::HashMap;

use bytes::BytesMut;

use crate::datum::{self, oid, Datum, Decoder, Undecodable};
use crate::merge::{Aggregate, Output};
use crate::numeric::Numeric;
use crate::row::{self, Column};

/// An error met while combining, with the SQLSTATE the client gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CombineError {
    pub code: &'static str,
    pub message: String,
}

fn refused(message: String) -> CombineError {
    CombineError {
        code: "0A000",
        message,
    }
}

#[derive(Clone, Copy, Debug)]
enum Plan {
    Group(Decoder),
    Count { binary: bool },
    SumInt { binary: bool },
    SumNumeric { binary: bool },
    SumFloat { binary: bool, float4: bool },
    Min(Decoder),
    Max(Decoder),
}

#[derive(Clone, Debug)]
enum Acc {
    /// The group value as the first shard sent it.
    Group(Option<Vec<u8>>),
    Int(Option<i128>),
    Numeric(Option<Numeric>),
    Float(Option<f64>),
    Extreme(Option<(Datum, Vec<u8>)>),
}

/// Combines the rows of every shard into the merged result.
pub(crate) struct Combine {
    plans: Vec<Plan>,
    /// Group key → index in `rows`; groups keep their first-seen order.
    index: HashMap<Vec<Option<Vec<u8>>>, usize>,
    rows: Vec<Vec<Acc>>,
}

impl Combine {
    /// Plans the combination of `outputs` over a result of `columns`, or
    /// says why it would not be exact.
    /// `c_collation`: the databases sort text bytewise, so min and max of
    /// text can be combined.
    pub fn new(
        outputs: &[Output],
        columns: &[Column],
        c_collation: bool,
    ) -> Result<Self, CombineError> {
        if outputs.len() != columns.len() {
            return Err(refused(format!(
                "the statement has {} output columns but the shards returned {}",
                outputs.len(),
                columns.len()
            )));
        }
        let plans = outputs
            .iter()
            .zip(columns)
            .map(|(o, c)| plan(*o, c, c_collation))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            plans,
            index: HashMap::new(),
            rows: Vec::new(),
        })
    }

    /// Folds one shard's DataRow body in.
    pub fn add(&mut self, data_row: &[u8]) -> Result<(), CombineError> {
        let bad = |m: &str| CombineError {
            code: "XX000",
            message: format!("a shard sent {m}"),
        };
        let fields = row::fields(data_row).ok_or_else(|| bad("a malformed DataRow"))?;
        if fields.len() != self.plans.len() {
            return Err(bad("a DataRow with the wrong number of columns"));
        }
        let mut key = Vec::new();
        for (p, f) in self.plans.iter().zip(&fields) {
            if let Plan::Group(d) = p {
                key.push(match f {
                    None => None,
                    Some(b) => {
                        Some(group_key(d, b).ok_or_else(|| bad("an unreadable group value"))?)
                    }
                });
            }
        }
        let at = match self.index.get(&key) {
            Some(i) => *i,
            None => {
                let accs = self
                    .plans
                    .iter()
                    .zip(&fields)
                    .map(|(p, f)| match p {
                        Plan::Group(_) => Acc::Group(f.map(<[u8]>::to_vec)),
                        Plan::Count { .. } | Plan::SumInt { .. } => Acc::Int(None),
                        Plan::SumNumeric { .. } => Acc::Numeric(None),
                        Plan::SumFloat { .. } => Acc::Float(None),
                        Plan::Min(_) | Plan::Max(_) => Acc::Extreme(None),
                    })
                    .collect();
                self.rows.push(accs);
                self.index.insert(key, self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        for ((p, acc), f) in self.plans.iter().zip(&mut self.rows[at]).zip(&fields) {
            let Some(b) = f else { continue };
            fold(p, acc, b).ok_or_else(|| bad("an aggregate value the router cannot read"))?;
        }
        Ok(())
    }

    /// The combined rows as DataRow messages, groups in first-seen order.
    /// Without GROUP BY and with no rows at all, one row of empty
    /// aggregates, as PostgreSQL answers.
    pub fn finish(mut self) -> Result<Vec<BytesMut>, CombineError> {
        if self.rows.is_empty() && !self.plans.iter().any(|p| matches!(p, Plan::Group(_))) {
            self.add_empty();
        }
        self.rows
            .iter()
            .map(|accs| {
                let fields = self
                    .plans
                    .iter()
                    .zip(accs)
                    .map(|(p, a)| encode(p, a))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut out = BytesMut::new();
                row::data_row(&mut out, &fields);
                Ok(out)
            })
            .collect()
    }

    fn add_empty(&mut self) {
        let accs = self
            .plans
            .iter()
            .map(|p| match p {
                Plan::Count { .. } => Acc::Int(Some(0)),
                Plan::SumInt { .. } => Acc::Int(None),
                Plan::SumNumeric { .. } => Acc::Numeric(None),
                Plan::SumFloat { .. } => Acc::Float(None),
                Plan::Group(_) | Plan::Min(_) | Plan::Max(_) => Acc::Extreme(None),
            })
            .collect();
        self.rows.push(accs);
    }
}

fn plan(o: Output, c: &Column, c_collation: bool) -> Result<Plan, CombineError> {
    let binary = c.format == 1;
    let what = |a: &str| format!("{a}() of column {:?} (type oid {})", c.name, c.type_oid);
    Ok(match o {
        Output::Group => Plan::Group(
            // Equality of text is bytewise under deterministic collations,
            // whatever their order.
            Decoder::for_type(c.type_oid, binary, true).map_err(|_| {
                refused(format!(
                    "GROUP BY column {:?} has type oid {}, whose equal values the router cannot recognise",
                    c.name, c.type_oid
                ))
            })?,
        ),
        Output::Aggregate(Aggregate::Count) if c.type_oid == oid::INT8 => Plan::Count { binary },
        Output::Aggregate(Aggregate::Sum) => match c.type_oid {
            oid::INT8 => Plan::SumInt { binary },
            oid::NUMERIC => Plan::SumNumeric { binary },
            oid::FLOAT4 | oid::FLOAT8 => Plan::SumFloat {
                binary,
                float4: c.type_oid == oid::FLOAT4,
            },
            _ => return Err(refused(format!("{} is not re-aggregated", what("sum")))),
        },
        Output::Aggregate(a @ (Aggregate::Min | Aggregate::Max)) => {
            let d = Decoder::for_type(c.type_oid, binary, c_collation).map_err(|e| {
                let name = if a == Aggregate::Min { "min" } else { "max" };
                refused(match e {
                    Undecodable::Collation => format!(
                        "{} depends on a collation the router cannot reproduce",
                        what(name)
                    ),
                    Undecodable::Type(_) => format!("{} is not re-aggregated", what(name)),
                })
            })?;
            if a == Aggregate::Min {
                Plan::Min(d)
            } else {
                Plan::Max(d)
            }
        }
        Output::Aggregate(Aggregate::Count) => {
            return Err(refused(format!("{} is not bigint", what("count"))))
        }
    })
}

/// A group value's identity: equal values give equal keys.
fn group_key(d: &Decoder, b: &[u8]) -> Option<Vec<u8>> {
    Some(match d.decode(b)? {
        Datum::Numeric(Numeric::Finite {
            negative,
            mut digits,
            scale,
        }) => {
            let zeros = digits
                .iter()
                .rev()
                .take_while(|d| **d == 0)
                .count()
                .min(scale as usize);
            digits.truncate(digits.len() - zeros);
            let n = Numeric::Finite {
                negative,
                digits,
                scale: scale - zeros as u16,
            };
            n.to_text().into_bytes()
        }
        Datum::Numeric(n) => n.to_text().into_bytes(),
        Datum::Float(f) if f.is_nan() => b"NaN".to_vec(),
        Datum::Float(f) => (f + 0.0).to_bits().to_be_bytes().to_vec(),
        Datum::Int(i) => i.to_be_bytes().to_vec(),
        Datum::Bytes(b) => b,
    })
}

fn int(binary: bool, b: &[u8]) -> Option<i128> {
    if binary {
        Some(i64::from_be_bytes(b.try_into().ok()?) as i128)
    } else {
        std::str::from_utf8(b)
            .ok()?
            .parse::<i64>()
            .ok()
            .map(i128::from)
    }
}

fn fold(p: &Plan, acc: &mut Acc, b: &[u8]) -> Option<()> {
    match (p, acc) {
        (Plan::Group(_), _) => {}
        (Plan::Count { binary } | Plan::SumInt { binary }, Acc::Int(sum)) => {
            *sum = Some(sum.unwrap_or(0) + int(*binary, b)?);
        }
        (Plan::SumNumeric { binary }, Acc::Numeric(sum)) => {
            let n = if *binary {
                Numeric::from_binary(b)?
            } else {
                Numeric::from_text(std::str::from_utf8(b).ok()?)?
            };
            *sum = Some(match sum.take() {
                Some(s) => s.add(&n),
                None => n,
            });
        }
        (Plan::SumFloat { binary, float4 }, Acc::Float(sum)) => {
            let d = Decoder {
                type_oid: if *float4 { oid::FLOAT4 } else { oid::FLOAT8 },
                binary: *binary,
            };
            let Datum::Float(v) = d.decode(b)? else {
                return None;
            };
            *sum = Some(match *sum {
                // float4 sums in float4, as float4pl.
                Some(s) if *float4 => (s as f32 + v as f32) as f64,
                Some(s) => s + v,
                None => v,
            });
        }
        (Plan::Min(d) | Plan::Max(d), Acc::Extreme(best)) => {
            let v = d.decode(b)?;
            let better = match best {
                None => true,
                Some((cur, _)) => {
                    let o = v.total_cmp(cur);
                    if matches!(p, Plan::Min(_)) {
                        o.is_lt()
                    } else {
                        o.is_gt()
                    }
                }
            };
            if better {
                *best = Some((v, b.to_vec()));
            }
        }
        _ => return None,
    }
    Some(())
}

fn encode(p: &Plan, acc: &Acc) -> Result<Option<Vec<u8>>, CombineError> {
    Ok(match (p, acc) {
        (_, Acc::Group(v)) => v.clone(),
        (Plan::Count { binary } | Plan::SumInt { binary }, Acc::Int(v)) => match v {
            None => None,
            Some(v) => {
                let v = i64::try_from(*v).map_err(|_| CombineError {
                    code: "22003",
                    message: "bigint out of range".into(),
                })?;
                Some(if *binary {
                    v.to_be_bytes().to_vec()
                } else {
                    v.to_string().into_bytes()
                })
            }
        },
        (Plan::SumNumeric { binary }, Acc::Numeric(v)) => v.as_ref().map(|n| {
            if *binary {
                n.to_binary()
            } else {
                n.to_text().into_bytes()
            }
        }),
        (Plan::SumFloat { binary, float4 }, Acc::Float(v)) => v.map(|f| match (binary, float4) {
            (true, true) => (f as f32).to_be_bytes().to_vec(),
            (true, false) => f.to_be_bytes().to_vec(),
            (false, _) => datum::float_text(f, *float4).into_bytes(),
        }),
        (_, Acc::Extreme(v)) => v.as_ref().map(|(_, b)| b.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::tests::description;

    fn rows(
        outputs: &[Output],
        cols: &[(&str, u32, i16)],
        shards: &[&[Option<&[u8]>]],
    ) -> Result<Vec<Vec<Option<Vec<u8>>>>, CombineError> {
        let columns = row::columns(&description(cols)).unwrap();
        let mut c = Combine::new(outputs, &columns, false)?;
        for fields in shards.chunks(1) {
            let mut out = BytesMut::new();
            row::data_row(&mut out, fields[0]);
            c.add(&out[5..])?;
        }
        Ok(c.finish()?
            .iter()
            .map(|r| {
                row::fields(&r[5..])
                    .unwrap()
                    .into_iter()
                    .map(|f| f.map(<[u8]>::to_vec))
                    .collect()
            })
            .collect())
    }

    fn t(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    const COUNT: Output = Output::Aggregate(Aggregate::Count);
    const SUM: Output = Output::Aggregate(Aggregate::Sum);
    const MIN: Output = Output::Aggregate(Aggregate::Min);
    const MAX: Output = Output::Aggregate(Aggregate::Max);

    #[test]
    fn text_aggregates_combine_exactly_and_skip_nulls() {
        let outputs = [COUNT, SUM, SUM, MIN, MAX, SUM];
        let cols = [
            ("count", oid::INT8, 0),
            ("sum", oid::NUMERIC, 0),
            ("sum", oid::INT8, 0),
            ("min", oid::TIMESTAMPTZ, 0),
            ("max", oid::NUMERIC, 0),
            ("sum", oid::FLOAT8, 0),
        ];
        let got = rows(
            &outputs,
            &cols,
            &[
                &[
                    Some(b"2"),
                    Some(b"10.10"),
                    Some(b"5"),
                    Some(b"2024-01-02 00:00:00+00"),
                    Some(b"9.5"),
                    Some(b"0.1"),
                ],
                // A shard with no rows: count 0, the rest NULL.
                &[Some(b"0"), None, None, None, None, None],
                &[
                    Some(b"3"),
                    Some(b"0.205"),
                    Some(b"-7"),
                    Some(b"2024-01-01 23:00:00-02"),
                    Some(b"10"),
                    Some(b"0.2"),
                ],
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![vec![
                t("5"),
                t("10.305"),
                t("-2"),
                t("2024-01-02 00:00:00+00"),
                t("10"),
                t("0.30000000000000004"),
            ]]
        );
        // Every shard empty: count 0, sums and extremes NULL.
        let got = rows(
            &outputs,
            &cols,
            &[&[Some(b"0"), None, None, None, None, None]],
        )
        .unwrap();
        assert_eq!(got, vec![vec![t("0"), None, None, None, None, None]]);
    }

    #[test]
    fn binary_aggregates_keep_their_encoding() {
        let two = Numeric::from_text("2.50").unwrap().to_binary();
        let three = Numeric::from_text("3").unwrap().to_binary();
        let got = rows(
            &[COUNT, SUM, MIN],
            &[
                ("c", oid::INT8, 1),
                ("s", oid::NUMERIC, 1),
                ("m", oid::INT4, 1),
            ],
            &[
                &[
                    Some(&4i64.to_be_bytes()),
                    Some(&two),
                    Some(&(-3i32).to_be_bytes()),
                ],
                &[
                    Some(&6i64.to_be_bytes()),
                    Some(&three),
                    Some(&7i32.to_be_bytes()),
                ],
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![vec![
                Some(10i64.to_be_bytes().to_vec()),
                Some(Numeric::from_text("5.50").unwrap().to_binary()),
                Some((-3i32).to_be_bytes().to_vec()),
            ]]
        );
        let overflow = rows(
            &[SUM],
            &[("s", oid::INT8, 0)],
            &[&[Some(b"9223372036854775807")], &[Some(b"1")]],
        );
        assert_eq!(overflow.unwrap_err().code, "22003");
    }

    #[test]
    fn groups_are_combined_by_value() {
        let got = rows(
            &[Output::Group, COUNT, SUM],
            &[
                ("amount", oid::NUMERIC, 0),
                ("count", oid::INT8, 0),
                ("sum", oid::INT8, 0),
            ],
            &[
                &[Some(b"1.0"), Some(b"2"), Some(b"3")],
                &[None, Some(b"1"), Some(b"1")],
                &[Some(b"2"), Some(b"1"), None],
                &[Some(b"1.00"), Some(b"4"), Some(b"4")],
                &[None, Some(b"1"), Some(b"1")],
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                vec![t("1.0"), t("6"), t("7")],
                vec![None, t("2"), t("2")],
                vec![t("2"), t("1"), None],
            ]
        );
        // Grouped with no rows at all: no rows.
        let none = rows(
            &[Output::Group, COUNT],
            &[("s", oid::TEXT, 0), ("c", oid::INT8, 0)],
            &[],
        );
        assert_eq!(none.unwrap(), Vec::<Vec<Option<Vec<u8>>>>::new());
    }

    #[test]
    fn what_cannot_be_combined_exactly_is_refused() {
        for (o, col, why) in [
            (SUM, ("s", 1186, 0), "sum() of column \"s\""),
            (MIN, ("m", oid::TEXT, 0), "collation"),
            (Output::Group, ("g", 3802, 0), "GROUP BY column \"g\""),
            (COUNT, ("c", oid::INT4, 0), "not bigint"),
        ] {
            let e = rows(&[o], &[col], &[]).unwrap_err();
            assert_eq!(e.code, "0A000");
            assert!(e.message.contains(why), "{}", e.message);
        }
    }
}
