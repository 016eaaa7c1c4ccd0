//! Integration tests: the real server over real sockets, through the
//! generated client, against the project's fake SuperOffice.

mod get;
mod helpers;
mod hostile;
mod limits;
mod list;
mod operate;
mod poll;
mod resume;
mod serving;
mod watch;
mod webhook;
