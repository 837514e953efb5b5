//! The link's queue, handles in flight and connections kept until accepted.

use super::*;
use std::os::unix::net::UnixStream;

fn sock() -> OwnedFd {
    UnixStream::pair().unwrap().0.into()
}

/// A Node worker's reads: each returns at most one descriptor, with the line it came with.
fn read_one(worker: &UnixStream) -> (String, usize) {
    let mut buf = vec![0; 4096];
    let r = crate::sys::recv_with_fds(worker.as_fd(), &mut buf).unwrap();
    (
        String::from_utf8_lossy(&buf[..r.len]).into_owned(),
        r.fds.len(),
    )
}

#[test]
fn each_handle_arrives_alone_with_its_own_line() {
    let (mine, worker) = Stream::pair().unwrap();
    let mut link = NodeLink::new(mine);
    let poll = mio::Poll::new().unwrap();
    link.answer_rr(
        1,
        "k",
        &serde_json::Value::Null,
        "127.0.0.1:80".parse().unwrap(),
    );
    for i in 0..3 {
        link.hand(ConnId(i), sock());
    }
    link.send_user(b"{\"after\":1}");
    link.flush(poll.registry()).unwrap();
    assert_eq!(link.unacked(), 3, "kept until accepted");
    // The reply (no descriptor) is read together with the first handle line.
    let (first, fds) = read_one(&worker);
    assert_eq!(fds, 1);
    assert!(
        first.contains("\"sockname\"") && first.ends_with("\"seq\":1}}\n"),
        "{first}"
    );
    for seq in [2, 3] {
        let (line, fds) = read_one(&worker);
        assert_eq!(fds, 1);
        assert!(line.ends_with(&format!("\"seq\":{seq}}}}}\n")), "{line}");
    }
    assert_eq!(read_one(&worker), ("{\"after\":1}\n".to_string(), 0));
    // ACKs and NACKs come back in order: a NACK returns the oldest handle in flight.
    link.handle_acked();
    let back = link.handle_nacked();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, ConnId(1));
    assert!(matches!(link.conn_reply(1, true), ConnReply::Taken));
    assert!(matches!(
        link.conn_reply(3, false),
        ConnReply::Refused(ConnId(2), _)
    ));
    assert_eq!(link.unacked(), 0);
}

#[test]
fn after_a_handle_line_in_pieces_nothing_more_goes_until_every_handle_is_acked() {
    let (mine, _worker) = Stream::pair().unwrap();
    let mut link = NodeLink::new(mine);
    let poll = mio::Poll::new().unwrap();
    link.hand(ConnId(1), sock());
    link.flush(poll.registry()).unwrap();
    assert_eq!(link.handles.len(), 1);
    link.held = true; // as flush sets it after a partial write of a handle line
    link.hand(ConnId(2), sock());
    link.send_user(b"1");
    link.flush(poll.registry()).unwrap();
    assert_eq!(link.out.len(), 2, "held");
    link.handle_acked();
    assert!(!link.held);
    link.flush(poll.registry()).unwrap();
    assert!(link.out.is_empty());
    assert_eq!(link.handles.len(), 1);
}

#[test]
fn at_most_max_handles_in_flight() {
    let (mine, _worker) = Stream::pair().unwrap();
    let mut link = NodeLink::new(mine);
    let poll = mio::Poll::new().unwrap();
    for i in 0..MAX_HANDLES_IN_FLIGHT as u64 + 2 {
        link.hand(ConnId(i), sock());
    }
    link.flush(poll.registry()).unwrap();
    assert_eq!(link.handles.len(), MAX_HANDLES_IN_FLIGHT);
    assert_eq!(link.out.len(), 2);
    link.handle_acked();
    link.flush(poll.registry()).unwrap();
    assert_eq!(link.out.len(), 1);
    let back = link.reclaim();
    assert_eq!(
        back.len(),
        MAX_HANDLES_IN_FLIGHT + 2,
        "sent and queued alike"
    );
}

#[test]
fn a_lingering_channel_wakes_nobody_and_reports_what_waits_when_it_stops() {
    use std::io::Write;
    let (mine, mut worker) = Stream::pair().unwrap();
    let mut link = NodeLink::new(mine);
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(8);
    let token = Token(7);
    poll.registry()
        .register(&mut link, token, Interest::READABLE)
        .unwrap();
    assert!(!link.may_linger(), "owes nothing");
    link.hand(ConnId(1), sock());
    link.flush(poll.registry()).unwrap();
    assert!(link.may_linger(), "owes the answer to a connection");
    link.linger(poll.registry(), true).unwrap();
    worker
        .write_all(b"{\"cmd\":\"NODE_HANDLE_ACK\"}\n")
        .unwrap();
    poll.poll(&mut events, Some(std::time::Duration::from_millis(50)))
        .unwrap();
    assert!(
        events.is_empty(),
        "a lingering channel does not wake the loop"
    );
    // Read once per turn instead; a short read means nothing more is there.
    assert_eq!(link.recv().unwrap().unwrap().unwrap(), FromNode::HandleAck);
    assert!(link.recv().unwrap().is_none());
    worker
        .write_all(b"{\"cmd\":\"NODE_CLUSTER\",\"ack\":0,\"accepted\":true,\"seq\":0}\n")
        .unwrap();
    link.linger(poll.registry(), false).unwrap();
    poll.poll(&mut events, Some(std::time::Duration::from_secs(10)))
        .unwrap();
    assert!(
        events.iter().any(|e| e.token() == token && e.is_readable()),
        "what waits is reported as soon as it stops lingering"
    );
    let reply = link.recv().unwrap().unwrap().unwrap();
    assert_eq!(
        reply,
        FromNode::Reply {
            ack: 0,
            accepted: Some(true)
        }
    );
    assert!(matches!(link.conn_reply(0, true), ConnReply::Taken));
    // A worker that leaves while its channel lingers is found by the next read.
    link.linger(poll.registry(), true).unwrap();
    drop(worker);
    assert!(link.recv().unwrap().is_none(), "the turn's last read");
    // (Closed, or reset: the worker left a handle line unread.)
    assert!(link.recv().is_err(), "then the end of the channel");
    poll.registry().deregister(&mut link).unwrap();
}
