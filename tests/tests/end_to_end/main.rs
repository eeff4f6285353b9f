//! End-to-end tests: the real `wardgate` binary between real TCP devices and a real
//! mosquitto with mutual TLS. One test binary, so the heavy dependencies link once.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod bad_input;
mod cli;
mod corrupt_spool;
mod crash;
mod device_plane;
mod imaging;
mod outage;
mod phi;
mod status;
mod systemd;
mod updates;
