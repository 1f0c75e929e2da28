//! The row messages a merge reads: RowDescription (each column's name,
//! type and format) and DataRow (each column's bytes, or NULL).

use bytes::{BufMut, BytesMut};

/// One output column, as its RowDescription field says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    pub type_oid: u32,
    /// 0 text, 1 binary (0 also in a Describe of a statement).
    pub format: i16,
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Some(head)
}

fn i16_of(b: &mut &[u8]) -> Option<i16> {
    Some(i16::from_be_bytes(take(b, 2)?.try_into().ok()?))
}

fn i32_of(b: &mut &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(take(b, 4)?.try_into().ok()?))
}

/// The columns of a RowDescription body.
pub(crate) fn columns(mut b: &[u8]) -> Option<Vec<Column>> {
    let n = i16_of(&mut b)?;
    (0..n.max(0))
        .map(|_| {
            let end = b.iter().position(|c| *c == 0)?;
            let name = String::from_utf8_lossy(&b[..end]).into_owned();
            b = &b[end + 1..];
            take(&mut b, 6)?; // table OID, attribute number
            let type_oid = i32_of(&mut b)? as u32;
            take(&mut b, 6)?; // type size, type modifier
            let format = i16_of(&mut b)?;
            Some(Column {
                name,
                type_oid,
                format,
            })
        })
        .collect()
}

/// The RowDescription a client gets for avg columns that the shards
/// answered as `sum, count` pairs: each pair becomes one column, the sum's
/// name, typed as avg's result (numeric, or float8 for a float8 sum).
/// `avg[i]` says whether output column `i` is such a pair.
pub(crate) fn join_avg_columns(mut b: &[u8], avg: &[bool]) -> Option<BytesMut> {
    let n = i16_of(&mut b)?;
    let mut fields = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let end = b.iter().position(|c| *c == 0)?;
        let (field, rest) = b.split_at(end + 1 + 18);
        fields.push(field.to_vec());
        b = rest;
    }
    let mut out = BytesMut::new();
    out.put_u8(b'T');
    out.put_i32(0);
    out.put_i16(avg.len() as i16);
    let mut at = 0;
    for is_avg in avg {
        let mut f = fields.get(at)?.clone();
        at += 1;
        if *is_avg {
            at += 1;
            let t = f.len() - 18 + 6;
            let float = f[t..t + 4] == crate::datum::oid::FLOAT8.to_be_bytes();
            let (oid, len) = if float {
                (crate::datum::oid::FLOAT8, 8i16)
            } else {
                (crate::datum::oid::NUMERIC, -1)
            };
            f[t..t + 4].copy_from_slice(&oid.to_be_bytes());
            f[t + 4..t + 6].copy_from_slice(&len.to_be_bytes());
            f[t + 6..t + 10].copy_from_slice(&(-1i32).to_be_bytes());
        }
        out.put_slice(&f);
    }
    (at == fields.len()).then_some(())?;
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// The fields of a DataRow body: each column's bytes, `None` for NULL.
pub(crate) fn fields(mut b: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let n = i16_of(&mut b)?;
    (0..n.max(0))
        .map(|_| {
            let len = i32_of(&mut b)?;
            if len < 0 {
                Some(None)
            } else {
                take(&mut b, len as usize).map(Some)
            }
        })
        .collect()
}

/// Writes a DataRow.
pub(crate) fn data_row<B: AsRef<[u8]>>(out: &mut BytesMut, fields: &[Option<B>]) {
    out.put_u8(b'D');
    let at = out.len();
    out.put_i32(0);
    out.put_i16(fields.len() as i16);
    for f in fields {
        match f {
            Some(v) => {
                out.put_i32(v.as_ref().len() as i32);
                out.put_slice(v.as_ref());
            }
            None => out.put_i32(-1),
        }
    }
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A RowDescription body for `(name, type, format)` columns.
    pub fn description(cols: &[(&str, u32, i16)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(cols.len() as i16);
        for (name, t, f) in cols {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_u32(16384);
            b.put_i16(1);
            b.put_u32(*t);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(*f);
        }
        b.to_vec()
    }

    #[test]
    fn descriptions_and_rows_read_back() {
        let d = description(&[("id", 20, 1), ("status", 25, 0)]);
        let cols = columns(&d).unwrap();
        assert_eq!(cols[1].name, "status");
        assert_eq!((cols[0].type_oid, cols[0].format), (20, 1));
        assert!(columns(&d[..d.len() - 1]).is_none());

        let mut out = BytesMut::new();
        data_row(&mut out, &[Some(&b"7"[..]), None, Some(&b""[..])]);
        assert_eq!(out[0], b'D');
        let f = fields(&out[5..]).unwrap();
        assert_eq!(f, vec![Some(&b"7"[..]), None, Some(&b""[..])]);
        assert!(fields(&out[5..out.len() - 1]).is_none());
    }

    #[test]
    fn avg_pairs_become_one_column_of_avgs_type() {
        let d = description(&[
            ("status", 25, 0),
            ("avg", 20, 1),
            ("count", 20, 1),
            ("a", 701, 0),
            ("count", 20, 0),
        ]);
        let t = join_avg_columns(&d, &[false, true, true]).unwrap();
        assert_eq!(
            i32::from_be_bytes(t[1..5].try_into().unwrap()) as usize,
            t.len() - 1
        );
        let cols = columns(&t[5..]).unwrap();
        let got: Vec<_> = cols
            .iter()
            .map(|c| (c.name.as_str(), c.type_oid, c.format))
            .collect();
        assert_eq!(
            got,
            vec![("status", 25, 0), ("avg", 1700, 1), ("a", 701, 0)]
        );
        assert!(join_avg_columns(&d, &[true, true]).is_none());
    }
}
