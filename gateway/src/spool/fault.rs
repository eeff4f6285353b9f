//! A test-only fault switch: make the spool writer hang, as a dead disk or a stuck
//! SQLite lock would, so the end-to-end tests can show that systemd's watchdog then
//! stops being fed.
//!
//! It exists only in debug builds (`cfg(debug_assertions)`): release builds — what the
//! README's deployment, the systemd unit and the Yocto recipe ship — compile it to
//! nothing. In a debug build it is inert unless `WARDGATE_TEST_FAULT_STALL_SPOOL` names
//! a file path; while a file exists at that path, the writer thread sleeps before
//! handling its next request.

/// The environment variable naming the trigger file.
pub const STALL_SPOOL_VAR: &str = "WARDGATE_TEST_FAULT_STALL_SPOOL";

/// Blocks the calling (writer) thread while the trigger file exists.
#[cfg(debug_assertions)]
pub(super) fn stall_while_requested() {
    use std::sync::OnceLock;
    static TRIGGER: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let Some(trigger) = TRIGGER.get_or_init(|| std::env::var_os(STALL_SPOOL_VAR).map(Into::into))
    else {
        return;
    };
    let mut logged = false;
    while trigger.exists() {
        if !logged {
            tracing::warn!(trigger = %trigger.display(), "test fault switch: spool writer stalled");
            logged = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Release builds: no fault switch.
#[cfg(not(debug_assertions))]
#[inline]
pub(super) fn stall_while_requested() {}
