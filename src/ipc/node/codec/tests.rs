//! The codec against byte sequences recorded from Node v20.20.2 workers (and Node's own
//! primary, under `strace`).

use super::*;

const ONLINE: &[u8] = br#"{"cmd":"NODE_CLUSTER","act":"online","seq":0}"#;
const QUERY: &[u8] = br#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":0,"addressType":4,"backlog":0,"seq":1}"#;
const USER: &[u8] = br#"{"hello":1}"#;
const LISTENING: &[u8] = br#"{"cmd":"NODE_CLUSTER","act":"listening","index":0,"data":null,"address":null,"port":1234,"addressType":4,"backlog":0,"seq":2}"#;
const CLOSE: &[u8] = br#"{"cmd":"NODE_CLUSTER","act":"close","key":"k","seq":3}"#;
const ACCEPTED: &[u8] = br#"{"cmd":"NODE_CLUSTER","ack":7,"accepted":true,"seq":4}"#;
const HANDLE_ACK: &[u8] = br#"{"cmd":"NODE_HANDLE_ACK"}"#;
const EXITED: &[u8] = br#"{"cmd":"NODE_CLUSTER","act":"exitedAfterDisconnect","seq":5}"#;

#[test]
fn recorded_worker_lines_decode() {
    assert_eq!(decode(ONLINE).unwrap(), FromNode::Online);
    let FromNode::QueryServer { seq, query } = decode(QUERY).unwrap() else {
        panic!("queryServer")
    };
    assert_eq!(seq, 1);
    assert_eq!(query.port, 0);
    assert_eq!(query.address, None);
    assert!(!query.exclusive);
    assert_eq!(query.key(), "null:0:4:null:0");
    assert_eq!(
        decode(USER).unwrap(),
        FromNode::User(r#"{"hello":1}"#.into())
    );
    let FromNode::Listening(l) = decode(LISTENING).unwrap() else {
        panic!("listening")
    };
    assert_eq!(l.port, 1234);
    assert_eq!(decode(CLOSE).unwrap(), FromNode::Close { key: "k".into() });
    assert_eq!(
        decode(ACCEPTED).unwrap(),
        FromNode::Reply {
            ack: 7,
            accepted: Some(true)
        }
    );
    assert_eq!(decode(HANDLE_ACK).unwrap(), FromNode::HandleAck);
    assert_eq!(
        decode(EXITED).unwrap(),
        FromNode::ExitedAfterDisconnect { seq: 5 }
    );
}

#[test]
fn the_handoff_fast_path_agrees_with_the_parser() {
    for line in [
        &br#"{"cmd":"NODE_CLUSTER","ack":7,"accepted":true,"seq":4}"#[..],
        br#"{"cmd":"NODE_CLUSTER","ack":12,"accepted":false,"seq":0}"#,
        br#"{"cmd":"NODE_HANDLE_ACK"}"#,
    ] {
        let fast = decode_handoff(line).expect("fast path");
        let v: Value = serde_json::from_slice(line).unwrap();
        let slow = match v.get("ack") {
            Some(a) => FromNode::Reply {
                ack: a.as_u64().unwrap(),
                accepted: v["accepted"].as_bool(),
            },
            None => FromNode::HandleAck,
        };
        assert_eq!(fast, slow);
    }
    for other in [
        &br#"{"cmd":"NODE_CLUSTER","ack":7,"accepted":true,"seq":4,"x":1}"#[..],
        br#"{"cmd":"NODE_CLUSTER","ack":,"accepted":true,"seq":4}"#,
        br#"{"cmd":"NODE_CLUSTER","ack":99999999999999999999,"accepted":true,"seq":4}"#,
    ] {
        assert_eq!(decode_handoff(other), None);
    }
    assert_eq!(
        newconn(&json_key("a\"b"), 1),
        handle(cluster(fields(json!({"act": "newconn", "key": "a\"b"})), 1))
    );
}

#[test]
fn garbage_and_strangers_are_errors_or_unknown_never_panics() {
    assert!(decode(b"{not json").is_err());
    assert!(decode(b"").is_err());
    assert_eq!(
        decode(br#"{"cmd":"NODE_FOO"}"#).unwrap(),
        FromNode::Unknown("NODE_FOO".into())
    );
    assert!(matches!(
        decode(br#"{"cmd":"NODE_CLUSTER","act":"dance","seq":1}"#).unwrap(),
        FromNode::Unknown(_)
    ));
    assert_eq!(decode(b"42").unwrap(), FromNode::User("42".into()));
}

#[test]
fn primary_lines_match_what_node_sends() {
    // Node's primary, recorded: the handle envelope and the round-robin reply.
    assert_eq!(
        newconn(&json_key("k"), 3),
        br#"{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k","seq":3}}
"#
    );
    let rr = rr_reply(
        1,
        "k",
        &Value::Null,
        sockname("0.0.0.0:3000".parse().unwrap()),
        0,
    );
    let v: Value = serde_json::from_slice(&rr).unwrap();
    assert_eq!(v["cmd"], "NODE_CLUSTER");
    assert_eq!(v["errno"], Value::Null);
    assert_eq!(v["ack"], 1);
    assert_eq!(v["sockname"]["port"], 3000);
    assert_eq!(v["sockname"]["family"], "IPv4");
    assert!(rr.ends_with(b"}\n") && !rr[..rr.len() - 1].contains(&b'\n'));
    assert_eq!(
        disconnect(9),
        b"{\"cmd\":\"NODE_CLUSTER\",\"act\":\"disconnect\",\"seq\":9}\n"
    );
    assert_eq!(
        ack(5, 2),
        b"{\"cmd\":\"NODE_CLUSTER\",\"ack\":5,\"seq\":2}\n"
    );
    let err: Value = serde_json::from_slice(&error_reply(1, "k", -98, 4)).unwrap();
    assert_eq!(err["errno"], -98);
    // A user message is re-serialized compactly: no newline inside can break framing.
    assert_eq!(user(b"{\n \"a\": 1\n}").unwrap(), b"{\"a\":1}\n");
    assert_eq!(user(b"nope"), None);
}

#[test]
fn lines_split_across_reads_and_partial_tails_wait() {
    let mut r = LineReader::default();
    r.push(&ONLINE[..10]);
    assert_eq!(r.next_line(), None);
    r.push(&ONLINE[10..]);
    r.push(b"\n");
    r.push(USER);
    r.push(b"\n{\"x\"");
    assert_eq!(r.next_line(), Some(Ok(ONLINE)));
    assert_eq!(r.next_line(), Some(Ok(USER)));
    assert_eq!(r.next_line(), None);
    r.push(b":1}\n");
    assert_eq!(r.next_line(), Some(Ok(&b"{\"x\":1}"[..])));
}

#[test]
fn an_endless_line_is_dropped_not_buffered() {
    let mut r = LineReader::default();
    r.push(&vec![b'a'; MAX_LINE + 1]);
    assert!(matches!(r.next_line(), Some(Err(_))));
    r.push(&[b'a'; 100]);
    assert_eq!(r.next_line(), None, "still inside the long line");
    r.push(b"aaa\n{}\n");
    assert_eq!(r.next_line(), Some(Ok(&b"{}"[..])));
}

#[test]
fn the_prerendered_newconn_is_the_whole_line() {
    let key = json_key("null:3000:4:undefined:0");
    for seq in [0, 7, 10, 12345, u64::MAX] {
        let want = handle(cluster(
            fields(json!({"act": "newconn", "key": "null:3000:4:undefined:0"})),
            seq,
        ));
        assert_eq!(newconn_with(&newconn_prefix(&key), seq), want, "seq {seq}");
    }
}
