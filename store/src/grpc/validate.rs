//! etcd's request checks, done on the member that receives a request, before anything is proposed.
//! Messages and codes are etcd's, because clients match them exactly.

use eden_proto::etcdserverpb::{
    range_request, request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use std::collections::HashSet;

use prost::Message;
use tonic::Status;

use crate::errors;
use crate::keys::KeyRange;

pub fn empty_key() -> Status {
    errors::invalid(errors::EMPTY_KEY)
}

pub fn too_large() -> Status {
    errors::invalid(errors::REQUEST_TOO_LARGE)
}

pub fn size(msg: &impl Message, max: usize) -> Result<(), Status> {
    if msg.encoded_len() > max {
        return Err(too_large());
    }
    Ok(())
}

pub fn range(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(empty_key());
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(errors::invalid(errors::INVALID_SORT_OPTION));
    }
    Ok(())
}

pub fn put(p: &PutRequest) -> Result<(), Status> {
    if p.key.is_empty() {
        return Err(empty_key());
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(errors::invalid(errors::VALUE_PROVIDED));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(errors::invalid(errors::LEASE_PROVIDED));
    }
    Ok(())
}

pub fn delete(d: &DeleteRangeRequest) -> Result<(), Status> {
    if d.key.is_empty() {
        return Err(empty_key());
    }
    Ok(())
}

/// Checks a txn and its nested txns: op count, each op, and that no key is written twice.
pub fn txn(t: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    if t.compare.len() > max_ops || t.success.len() > max_ops || t.failure.len() > max_ops {
        return Err(errors::invalid(errors::TOO_MANY_OPS));
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(empty_key());
        }
    }
    for branch in [&t.success, &t.failure] {
        for op in branch {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => range(r)?,
                Some(request_op::Request::RequestPut(p)) => put(p)?,
                Some(request_op::Request::RequestDeleteRange(d)) => delete(d)?,
                Some(request_op::Request::RequestTxn(t)) => txn(t, max_ops)?,
                None => {}
            }
        }
        let mut puts = HashSet::new();
        let mut dels = Vec::new();
        writes(branch, &mut puts, &mut dels)?;
    }
    Ok(())
}

fn dup() -> Status {
    errors::invalid(errors::DUPLICATE_KEY)
}

/// Collects the keys a branch puts and the ranges it deletes; a key put twice, or put and deleted,
/// is a duplicate. A nested txn counts with the writes of both its branches. (A set: a task's
/// txn puts 10,000 keys.)
fn writes(
    ops: &[RequestOp],
    puts: &mut HashSet<Vec<u8>>,
    dels: &mut Vec<KeyRange>,
) -> Result<(), Status> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
                    return Err(dup());
                }
                puts.insert(p.key.clone());
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                let r = KeyRange::new(&d.key, &d.range_end);
                if puts.iter().any(|k| r.contains(k)) {
                    return Err(dup());
                }
                dels.push(r);
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let (mut p1, mut d1) = (puts.clone(), dels.clone());
                writes(&t.success, &mut p1, &mut d1)?;
                let (mut p2, mut d2) = (puts.clone(), dels.clone());
                writes(&t.failure, &mut p2, &mut d2)?;
                puts.extend(p1.into_iter().chain(p2));
                dels.extend(d1.into_iter().chain(d2));
            }
            _ => {}
        }
    }
    Ok(())
}

/// True when a txn (with its nested txns) only reads.
pub fn read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => read_only(t),
            _ => false,
        })
}

/// True when a txn (with its nested txns) may put a key (it adds data: the quota applies).
pub fn has_puts(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => has_puts(t),
            _ => false,
        })
}

/// Every put of a request, those of (nested) txns' both branches included.
pub fn puts<'a>(op: &'a RequestOp, out: &mut Vec<&'a PutRequest>) {
    match &op.request {
        Some(request_op::Request::RequestPut(p)) => out.push(p),
        Some(request_op::Request::RequestTxn(t)) => {
            for o in t.success.iter().chain(t.failure.iter()) {
                puts(o, out);
            }
        }
        _ => {}
    }
}

/// True when every range in a read-only txn asks for a serializable read.
pub fn all_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            Some(request_op::Request::RequestTxn(t)) => all_serializable(t),
            _ => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use eden_proto::etcdserverpb::{request_op::Request, RequestOp};

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn duplicate_keys_in_a_txn_are_refused() {
        let t = TxnRequest {
            success: vec![put_op("a"), put_op("a")],
            ..Default::default()
        };
        assert_eq!(
            txn(&t, 128).unwrap_err().message(),
            "etcdserver: duplicate key given in txn request"
        );
        let t = TxnRequest {
            success: vec![del_op("a", "c"), put_op("b")],
            ..Default::default()
        };
        assert!(txn(&t, 128).is_err());
        // the same key in the two branches is fine: only one runs.
        let t = TxnRequest {
            success: vec![put_op("a")],
            failure: vec![put_op("a")],
            ..Default::default()
        };
        assert!(txn(&t, 128).is_ok());
        let nested = TxnRequest {
            success: vec![put_op("a")],
            ..Default::default()
        };
        let t = TxnRequest {
            success: vec![
                put_op("a"),
                RequestOp {
                    request: Some(Request::RequestTxn(nested)),
                },
            ],
            ..Default::default()
        };
        assert!(txn(&t, 128).is_err());
    }

    #[test]
    fn too_many_ops() {
        let t = TxnRequest {
            success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert_eq!(
            txn(&t, 128).unwrap_err().message(),
            "etcdserver: too many operations in txn request"
        );
    }
}
