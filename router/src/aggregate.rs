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
    Count {
        binary: bool,
    },
    SumInt {
        binary: bool,
    },
    SumNumeric {
        binary: bool,
    },
    SumFloat {
        binary: bool,
        float4: bool,
    },
    Min(Decoder),
    Max(Decoder),
    /// avg from the shards' sum and count columns: numeric (the sum is
    /// bigint or numeric) or float8; its output is numeric or float8.
    Avg {
        binary: bool,
        sum_type: u32,
    },
}

impl Plan {
    /// Columns of the shards' rows the output column is made from.
    fn width(&self) -> usize {
        match self {
            Plan::Avg { .. } => 2,
            _ => 1,
        }
    }
}

#[derive(Clone, Debug)]
enum Acc {
    /// The group value as the first shard sent it.
    Group(Option<Vec<u8>>),
    Int(Option<i128>),
    Numeric(Option<Numeric>),
    Float(Option<f64>),
    Extreme(Option<(Datum, Vec<u8>)>),
    /// avg: the sum so far (numeric, or float8 for a float8 sum) and count.
    Avg(Option<Numeric>, Option<f64>, u64),
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
        let width: usize = outputs
            .iter()
            .map(|o| 1 + usize::from(*o == Output::Aggregate(Aggregate::Avg)))
            .sum();
        if width != columns.len() {
            return Err(refused(format!(
                "the statement has {width} output columns on the shards but they returned {}",
                columns.len()
            )));
        }
        let mut at = 0;
        let plans = outputs
            .iter()
            .map(|o| {
                let p = plan(*o, &columns[at..], c_collation)?;
                at += p.width();
                Ok(p)
            })
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
        let all = row::fields(data_row).ok_or_else(|| bad("a malformed DataRow"))?;
        if all.len() != self.plans.iter().map(Plan::width).sum::<usize>() {
            return Err(bad("a DataRow with the wrong number of columns"));
        }
        // Each output column's shard fields.
        let mut at = 0;
        let fields: Vec<&[Option<&[u8]>]> = self
            .plans
            .iter()
            .map(|p| {
                at += p.width();
                &all[at - p.width()..at]
            })
            .collect();
        let mut key = Vec::new();
        for (p, f) in self.plans.iter().zip(&fields) {
            let f = f[0];
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
                        Plan::Group(_) => Acc::Group(f[0].map(<[u8]>::to_vec)),
                        _ => empty(p),
                    })
                    .collect();
                self.rows.push(accs);
                self.index.insert(key, self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        for ((p, acc), f) in self.plans.iter().zip(&mut self.rows[at]).zip(&fields) {
            fold(p, acc, f).ok_or_else(|| bad("an aggregate value the router cannot read"))?;
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
                _ => empty(p),
            })
            .collect();
        self.rows.push(accs);
    }
}

/// The accumulator of an output column before any row.
fn empty(p: &Plan) -> Acc {
    match p {
        Plan::Count { .. } | Plan::SumInt { .. } => Acc::Int(None),
        Plan::SumNumeric { .. } => Acc::Numeric(None),
        Plan::SumFloat { .. } => Acc::Float(None),
        Plan::Avg { .. } => Acc::Avg(None, None, 0),
        Plan::Group(_) | Plan::Min(_) | Plan::Max(_) => Acc::Extreme(None),
    }
}

/// The plan of an output column whose shard columns start `columns`.
fn plan(o: Output, columns: &[Column], c_collation: bool) -> Result<Plan, CombineError> {
    let c = &columns[0];
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
        Output::Aggregate(Aggregate::Avg) => {
            let count = columns.get(1).map(|c| c.type_oid);
            match (c.type_oid, count) {
                (oid::INT8 | oid::NUMERIC | oid::FLOAT8, Some(oid::INT8)) => Plan::Avg {
                    binary,
                    sum_type: c.type_oid,
                },
                // sum(real) adds in real, avg(real) in double precision.
                _ => {
                    return Err(refused(format!(
                        "avg() of column {:?} (sum type oid {}) is not re-aggregated",
                        c.name, c.type_oid
                    )))
                }
            }
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

fn fold(p: &Plan, acc: &mut Acc, f: &[Option<&[u8]>]) -> Option<()> {
    if let (Plan::Avg { binary, sum_type }, Acc::Avg(num, float, count)) = (p, &mut *acc) {
        let n = int(*binary, f[1]?)?;
        let Some(sum) = f[0] else {
            return (n == 0).then_some(());
        };
        *count += u64::try_from(n).ok()?;
        if *sum_type == oid::FLOAT8 {
            let d = Decoder {
                type_oid: oid::FLOAT8,
                binary: *binary,
            };
            let Datum::Float(v) = d.decode(sum)? else {
                return None;
            };
            *float = Some(float.unwrap_or(0.0) + v);
        } else {
            let v = match (*sum_type, *binary) {
                (oid::NUMERIC, true) => Numeric::from_binary(sum)?,
                (oid::NUMERIC, false) => Numeric::from_text(std::str::from_utf8(sum).ok()?)?,
                _ => Numeric::from_text(&int(*binary, sum)?.to_string())?,
            };
            *num = Some(match num.take() {
                Some(s) => s.add(&v),
                None => v,
            });
        }
        return Some(());
    }
    let Some(b) = f[0] else {
        return Some(());
    };
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
        (Plan::Avg { binary, .. }, Acc::Avg(num, float, count)) => match (num, float) {
            _ if *count == 0 => None,
            (_, Some(f)) => {
                let avg = f / *count as f64;
                Some(if *binary {
                    avg.to_be_bytes().to_vec()
                } else {
                    datum::float_text(avg, false).into_bytes()
                })
            }
            (Some(n), _) => n.div_count(*count).map(|avg| {
                if *binary {
                    avg.to_binary()
                } else {
                    avg.to_text().into_bytes()
                }
            }),
            (None, None) => None,
        },
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

    /// Expected values as PostgreSQL computes avg over all the rows.
    #[test]
    fn avg_divides_the_summed_sums_by_the_summed_counts() {
        const AVG: Output = Output::Aggregate(Aggregate::Avg);
        // avg(int4) over 1, 2 | 4 | nothing: sums are bigint.
        let got = rows(
            &[AVG, AVG, AVG],
            &[
                ("avg", oid::INT8, 0),
                ("count", oid::INT8, 0),
                ("avg", oid::NUMERIC, 0),
                ("count", oid::INT8, 0),
                ("f", oid::FLOAT8, 0),
                ("count", oid::INT8, 0),
            ],
            &[
                &[
                    Some(b"3"),
                    Some(b"2"),
                    Some(b"10.50"),
                    Some(b"2"),
                    Some(b"1.5"),
                    Some(b"2"),
                ],
                &[
                    Some(b"4"),
                    Some(b"1"),
                    Some(b"0.5"),
                    Some(b"1"),
                    Some(b"0"),
                    Some(b"1"),
                ],
                &[None, Some(b"0"), None, Some(b"0"), None, Some(b"0")],
            ],
        )
        .unwrap();
        let want = [t("2.3333333333333333"), t("3.6666666666666667"), t("0.5")];
        assert_eq!(got, vec![want.to_vec()]);
        // Binary numeric out; no rows at all gives NULL.
        let got = rows(
            &[AVG],
            &[("avg", oid::NUMERIC, 1), ("count", oid::INT8, 1)],
            &[&[
                Some(&Numeric::from_text("5").unwrap().to_binary()),
                Some(&2i64.to_be_bytes()),
            ]],
        )
        .unwrap();
        let two_and_half = Numeric::from_text("2.5000000000000000").unwrap();
        assert_eq!(got, vec![vec![Some(two_and_half.to_binary())]]);
        let none = rows(
            &[AVG],
            &[("avg", oid::INT8, 0), ("count", oid::INT8, 0)],
            &[&[None, Some(b"0")]],
        );
        assert_eq!(none.unwrap(), vec![vec![None]]);
        // sum(real) adds in real; avg(real) would not match.
        let e = rows(
            &[AVG],
            &[("avg", oid::FLOAT4, 0), ("count", oid::INT8, 0)],
            &[],
        );
        assert!(e.unwrap_err().message.contains("avg()"));
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
