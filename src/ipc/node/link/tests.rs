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
