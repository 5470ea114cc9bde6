//! A connection from a Unix-socket listener has no IP peer: `into_tcp` refuses it.
#![cfg(unix)] // Unix-socket listeners

mod util;

use std::io::Read;
use std::os::unix::net::UnixStream;

use handover::{AsSocketRef, Channel};
use handover_worker::protocol::WorkerMessage;
use handover_worker::{Event, Worker};

use util::{next, offer, WAIT};

#[test]
fn a_connection_from_a_unix_listener_is_refused_and_still_finished() {
    let (sup, ours) = Channel::pair().unwrap();
    let mut worker = Worker::from_channel(ours, 1).unwrap();
    next(&sup);
    let (mut client, accepted) = UnixStream::pair().unwrap();
    offer(&sup, 9, None, accepted.as_socket_ref());
    drop(accepted);
    let Event::Connection(conn) = worker.recv().unwrap() else { panic!("not a connection") };
    assert_eq!(next(&sup), WorkerMessage::Ack(9));
    let err = conn.into_tcp().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("into_parts"), "{err}");
    assert_eq!(next(&sup), WorkerMessage::Finished(9));
    let mut rest = Vec::new();
    client.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
}
