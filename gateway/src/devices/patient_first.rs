//! Patient-first: the one rule every non-clinical job asks before it touches a device.
//!
//! While a device treats a patient (`in-procedure`), wardgate starts no work that
//! concerns it and is not clinical data: bulk uploads of its files, shipping its logs,
//! offering it a patch. Work already deferred resumes when the procedure ends
//! ([`super::Registry::wait_until_allowed`]). Clinical data (observations, alarms,
//! measurements) never asks: it always flows.
//!
//! A patch is also not offered to a device that is already `updating` (one update at a
//! time), nor to one that is `offline` or `unknown` (it could not fetch it). Everything
//! else proceeds. Devices the site did not declare have no state and are not held back.

use wardgate_proto::DeviceState;

/// Work that is not clinical data and may wait for a patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NonClinicalWork {
    /// Uploading a device's files (imaging, large logs) in bulk.
    BulkUpload,
    /// Shipping a device's log lines.
    LogShipping,
    /// Offering a device a software update.
    PatchOffer,
}

impl NonClinicalWork {
    /// A short name for logs and audit entries.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            NonClinicalWork::BulkUpload => "bulk upload",
            NonClinicalWork::LogShipping => "log shipping",
            NonClinicalWork::PatchOffer => "patch offer",
        }
    }
}

/// The rule's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Proceed,
    /// Not now; ask again when the device's state changes.
    Defer(DeviceState),
}

/// The rule. Pure: the registry supplies the state.
#[must_use]
pub const fn decide(state: DeviceState, work: NonClinicalWork) -> Decision {
    match (state, work) {
        (DeviceState::InProcedure, _)
        | (
            DeviceState::Updating | DeviceState::Offline | DeviceState::Unknown,
            NonClinicalWork::PatchOffer,
        ) => Decision::Defer(state),
        _ => Decision::Proceed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_WORK: [NonClinicalWork; 3] = [
        NonClinicalWork::BulkUpload,
        NonClinicalWork::LogShipping,
        NonClinicalWork::PatchOffer,
    ];

    #[test]
    fn nothing_non_clinical_starts_during_a_procedure() {
        for work in ALL_WORK {
            assert_eq!(
                decide(DeviceState::InProcedure, work),
                Decision::Defer(DeviceState::InProcedure)
            );
            assert_eq!(decide(DeviceState::Online, work), Decision::Proceed);
        }
    }

    #[test]
    fn patches_wait_for_a_reachable_idle_device_but_logs_do_not() {
        for state in [
            DeviceState::Updating,
            DeviceState::Offline,
            DeviceState::Unknown,
        ] {
            assert_eq!(
                decide(state, NonClinicalWork::PatchOffer),
                Decision::Defer(state)
            );
            assert_eq!(
                decide(state, NonClinicalWork::LogShipping),
                Decision::Proceed
            );
        }
        assert_eq!(
            decide(DeviceState::Error, NonClinicalWork::PatchOffer),
            Decision::Proceed,
            "a fault may be what the patch fixes"
        );
    }
}
