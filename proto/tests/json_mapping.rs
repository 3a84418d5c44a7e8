//! The etcd packages' JSON mapping is the one etcd's gateway speaks: each expectation below is
//! what etcd 3.4.23's `/v3/...` routes answered or accepted for the same message.

use eden_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, LeaseGrantResponse, PutRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use eden_proto::mvccpb::{event::EventType, Event, KeyValue};

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: 15118495548433857066,
        member_id: 13668033151171901709,
        revision: rev,
        raft_term: 2,
    })
}

#[test]
fn responses_use_proto_names_strings_for_64_bit_integers_and_leave_defaults_out() {
    let r = RangeResponse {
        header: header(3),
        kvs: vec![KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            value: b"baz".to_vec(),
            lease: 0,
        }],
        more: false,
        count: 1,
    };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"3","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}],"count":"1"}"#
    );
    let g = LeaseGrantResponse {
        header: None,
        id: 4111120344617815567,
        ttl: 30,
        error: String::new(),
    };
    assert_eq!(
        serde_json::to_string(&g).unwrap(),
        r#"{"ID":"4111120344617815567","TTL":"30"}"#
    );
    let t = TxnResponse {
        header: None,
        succeeded: true,
        responses: vec![ResponseOp {
            response: Some(response_op::Response::ResponsePut(Default::default())),
        }],
    };
    assert_eq!(
        serde_json::to_string(&t).unwrap(),
        r#"{"succeeded":true,"responses":[{"response_put":{}}]}"#
    );
    let e = Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key: b"foo".to_vec(),
            mod_revision: 5,
            ..Default::default()
        }),
        prev_kv: None,
    };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"5"}}"#
    );
}

#[test]
fn requests_accept_proto_and_json_names_numbers_or_strings_and_enum_names_or_numbers() {
    let p: PutRequest =
        serde_json::from_str(r#"{"key":"Zm9v","value":"YmFy","prevKv":true,"lease":"7"}"#).unwrap();
    assert_eq!(p.key, b"foo");
    assert_eq!(p.value, b"bar");
    assert!(p.prev_kv);
    assert_eq!(p.lease, 7);
    let r: RangeRequest =
        serde_json::from_str(r#"{"key":"Zm9v","limit":2,"sort_order":"DESCEND","bogus":1}"#)
            .unwrap();
    assert_eq!(r.limit, 2);
    assert_eq!(r.sort_order, 2);
    let r: RangeRequest = serde_json::from_str(r#"{"key":"Zm9v","sort_order":1}"#).unwrap();
    assert_eq!(r.sort_order, 1);
    let t: TxnRequest = serde_json::from_str(
        r#"{"compare":[{"target":"VALUE","key":"Zm9v","value":"YmF6","result":"EQUAL"}],
            "success":[{"request_put":{"key":"Zm9v","value":"cXV4"}}],
            "failure":[{"request_range":{"key":"Zm9v"}}]}"#,
    )
    .unwrap();
    assert_eq!(
        t.compare,
        vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: b"foo".to_vec(),
            range_end: vec![],
            target_union: Some(compare::TargetUnion::Value(b"baz".to_vec())),
        }]
    );
    assert!(matches!(
        t.success[..],
        [RequestOp {
            request: Some(request_op::Request::RequestPut(_))
        }]
    ));
    // etcd's gateway refuses what is not JSON, or a field of the wrong type.
    assert!(serde_json::from_str::<RangeRequest>(r#"{"key":"Zm9v","limit":"x"}"#).is_err());
    assert!(
        serde_json::from_str::<RangeRequest>(r#"{"key":"Zm9v","serializable":"true"}"#).is_err()
    );
    assert!(serde_json::from_str::<RangeRequest>(r#"{"key":"Zm9v","#).is_err());
}
