//! Messages between the primary and its workers (issue 7): in order and complete under load and
//! backpressure, and a clear error (never a crash) for a message over the size bound.

use herd::{Control, IpcError, MAX_MESSAGE};

#[test]
fn control_send_refuses_an_oversized_payload() {
    let mut control = Control::default();
    match control.send(1, vec![0; MAX_MESSAGE + 1]) {
        Err(IpcError::TooLarge(n)) => assert_eq!(n, MAX_MESSAGE + 1),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(control.send(1, vec![0; MAX_MESSAGE]).is_ok());
    assert!(control.send(1, "text works too").is_ok());
    assert!(control.is_dead(1), "no such worker: dead");
    assert!(control.workers().is_empty());
}
