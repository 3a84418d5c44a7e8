//! Small helpers over the etcd v3 API for the objects under `/eden/`: requests, compares, and
//! reads of one key or a prefix.

use crate::client::{Client, ClientError};
use crate::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, TxnResponse,
};
use crate::keys::prefix_end;
use crate::mvccpb::KeyValue;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub fn put(key: &str, value: &impl Serialize, lease: i64) -> RequestOp {
    put_raw(key, serde_json::to_vec(value).expect("JSON"), lease)
}

pub fn put_raw(key: &str, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub fn get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

pub fn delete(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.into(),
                ..Default::default()
            },
        )),
    }
}

pub fn delete_prefix(prefix: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: prefix.into(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            },
        )),
    }
}

/// The key does not exist.
pub fn absent(key: &str) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Version as i32,
        key: key.into(),
        target_union: Some(TargetUnion::Version(0)),
        range_end: vec![],
    }
}

/// The key exists.
pub fn present(key: &str) -> Compare {
    Compare {
        result: CompareResult::Greater as i32,
        ..absent(key)
    }
}

/// The key holds exactly this value.
pub fn value_is(key: &str, value: &[u8]) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: key.into(),
        target_union: Some(TargetUnion::Value(value.to_vec())),
        range_end: vec![],
    }
}

/// The key was last changed at this revision (0: it does not exist).
pub fn unchanged_since(key: &str, mod_revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.into(),
        target_union: Some(TargetUnion::ModRevision(mod_revision)),
        range_end: vec![],
    }
}

pub async fn txn(
    client: &Client,
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
) -> Result<TxnResponse, ClientError> {
    client
        .txn(TxnRequest {
            compare,
            success,
            failure,
        })
        .await
}

/// The key-values a txn's `i`th operation (a get) returned.
pub fn txn_kvs(r: &TxnResponse, i: usize) -> &[KeyValue] {
    match r.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

pub async fn get_one(client: &Client, key: &str) -> Result<Option<KeyValue>, ClientError> {
    let r = client
        .range(RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.kvs.into_iter().next())
}

/// Deletes one key; returns how many were deleted (0 or 1).
pub async fn delete_one(client: &Client, key: &str) -> Result<i64, ClientError> {
    let r = client
        .delete_range(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.deleted)
}

/// Every key under `prefix` (at `revision`, 0: now), and the revision read.
pub async fn get_prefix(
    client: &Client,
    prefix: &str,
    revision: i64,
    keys_only: bool,
) -> Result<(Vec<KeyValue>, i64), ClientError> {
    let r = client
        .range(RangeRequest {
            key: prefix.into(),
            range_end: prefix_end(prefix.as_bytes()),
            revision,
            keys_only,
            ..Default::default()
        })
        .await?;
    Ok((r.kvs, r.header.map_or(0, |h| h.revision)))
}

/// A stored JSON object; Err names the key when it does not parse.
pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, String> {
    serde_json::from_slice(&kv.value).map_err(|e| {
        format!(
            "{} holds something eden cannot read: {e}",
            String::from_utf8_lossy(&kv.key)
        )
    })
}
