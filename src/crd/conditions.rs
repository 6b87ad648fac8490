//! Conditions in the standard `metav1.Condition` shape, computed by small pure functions and merged so
//! that `lastTransitionTime` only moves when a condition's status really changes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition types of a MigrationDatabase, the things a user or a pipeline waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The database is provisioned and consistent with its current mode (true in Staging and in
    /// Operational).
    Ready,
    /// The migration's validation record exists in the staging database.
    Validated,
    /// The switch to operational mode is complete.
    Operational,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Validated => "Validated",
            ConditionType::Operational => "Operational",
        }
    }
}

/// Sets one condition in `conditions`, keeping `lastTransitionTime` when the status is unchanged, and
/// returns whether anything changed (status, reason, message or observed generation).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_.as_str()) {
        Some(existing) => {
            let changed = existing.status != status
                || existing.reason != reason
                || existing.message != message
                || existing.observed_generation != observed_generation;
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status.to_owned();
            existing.reason = reason.to_owned();
            existing.message = message.to_owned();
            existing.observed_generation = observed_generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.as_str().to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                observed_generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// Whether the condition of this type is present and `True`.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_.as_str() && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conditions = Vec::new();
        assert!(set_condition(
            &mut conditions,
            ConditionType::Ready,
            false,
            "Provisioning",
            "creating roles",
            Some(1),
            at(10)
        ));
        assert!(set_condition(
            &mut conditions,
            ConditionType::Ready,
            false,
            "Provisioning",
            "applying schema",
            Some(1),
            at(20)
        ));
        assert_eq!(conditions[0].last_transition_time, Time(at(10)));
        assert!(!set_condition(
            &mut conditions,
            ConditionType::Ready,
            false,
            "Provisioning",
            "applying schema",
            Some(1),
            at(30)
        ));
        assert!(set_condition(
            &mut conditions,
            ConditionType::Ready,
            true,
            "Staging",
            "ready for migration",
            Some(1),
            at(40)
        ));
        assert_eq!(conditions[0].last_transition_time, Time(at(40)));
        assert!(is_true(&conditions, ConditionType::Ready));
        assert!(!is_true(&conditions, ConditionType::Operational));
    }

    #[test]
    fn conditions_of_different_types_are_kept_apart() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ConditionType::Ready,
            true,
            "Staging",
            "",
            Some(2),
            at(1),
        );
        set_condition(
            &mut conditions,
            ConditionType::Validated,
            false,
            "NotValidated",
            "",
            Some(2),
            at(1),
        );
        assert_eq!(conditions.len(), 2);
        assert!(is_true(&conditions, ConditionType::Ready));
        assert!(!is_true(&conditions, ConditionType::Validated));
    }
}
