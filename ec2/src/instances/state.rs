//! The instance lifecycle: EC2's states and codes, which verb is allowed in which state,
//! and the StateReason / StateTransitionReason texts EC2 shows.
//!
//! Each verb moves the instance into an intermediate state (pending, stopping,
//! shutting-down) at once; the launcher calls [`complete`] when the VMM has actually
//! started or gone, as EC2 does when its host reports back.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Ec2Error, ErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceStateName {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

impl InstanceStateName {
    pub const ALL: [InstanceStateName; 6] = [
        InstanceStateName::Pending,
        InstanceStateName::Running,
        InstanceStateName::ShuttingDown,
        InstanceStateName::Terminated,
        InstanceStateName::Stopping,
        InstanceStateName::Stopped,
    ];

    /// EC2's state code (the low byte of DescribeInstances' `State.Code`).
    pub fn code(self) -> u16 {
        match self {
            InstanceStateName::Pending => 0,
            InstanceStateName::Running => 16,
            InstanceStateName::ShuttingDown => 32,
            InstanceStateName::Terminated => 48,
            InstanceStateName::Stopping => 64,
            InstanceStateName::Stopped => 80,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStateName::Pending => "pending",
            InstanceStateName::Running => "running",
            InstanceStateName::ShuttingDown => "shutting-down",
            InstanceStateName::Terminated => "terminated",
            InstanceStateName::Stopping => "stopping",
            InstanceStateName::Stopped => "stopped",
        }
    }
}

impl fmt::Display for InstanceStateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"Code": 16, "Name": "running"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceState {
    pub code: u16,
    pub name: InstanceStateName,
}

impl From<InstanceStateName> for InstanceState {
    fn from(name: InstanceStateName) -> Self {
        InstanceState {
            code: name.code(),
            name,
        }
    }
}

/// The user-facing verbs that change state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Hibernate,
    Reboot,
    Terminate,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Start => "started",
            Action::Stop | Action::Hibernate => "stopped",
            Action::Reboot => "rebooted",
            Action::Terminate => "terminated",
        }
    }
}

/// What an allowed verb does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Move to this (intermediate) state; the launcher does the work.
    Begin(InstanceStateName),
    /// Already there or on the way: EC2 answers with the current state, nothing to do.
    NoChange,
    /// Reboot: the state stays `running`; the launcher restarts the guest.
    Reboot,
}

/// Decides what `action` does to an instance in `state` (EC2's rules), or refuses it
/// with `IncorrectInstanceState` in EC2's words. `hibernation_configured` is the
/// instance's `HibernationOptions.Configured`.
pub fn decide(
    instance_id: &str,
    state: InstanceStateName,
    action: Action,
    hibernation_configured: bool,
) -> Result<Outcome, Ec2Error> {
    use InstanceStateName::*;
    if action == Action::Hibernate && !hibernation_configured {
        return Err(Ec2Error::new(
            ErrorCode::UnsupportedOperation,
            format!("Hibernation is not configured for the instance '{instance_id}'"),
        ));
    }
    let outcome = match (action, state) {
        (Action::Start, Stopped) => Outcome::Begin(Pending),
        (Action::Start, Pending | Running) => Outcome::NoChange,
        (Action::Stop | Action::Hibernate, Running) => Outcome::Begin(Stopping),
        (Action::Stop | Action::Hibernate, Stopping | Stopped) => Outcome::NoChange,
        (Action::Reboot, Running) => Outcome::Reboot,
        (Action::Terminate, Terminated | ShuttingDown) => Outcome::NoChange,
        (Action::Terminate, _) => Outcome::Begin(ShuttingDown),
        _ => {
            return Err(Ec2Error::new(
                ErrorCode::IncorrectInstanceState,
                format!(
                    "The instance '{instance_id}' is not in a state from which it can be {}.",
                    action.verb()
                ),
            ))
        }
    };
    Ok(outcome)
}

/// Where an intermediate state ends: pending -> running, stopping -> stopped,
/// shutting-down -> terminated. `None` for the settled states.
pub fn complete(state: InstanceStateName) -> Option<InstanceStateName> {
    match state {
        InstanceStateName::Pending => Some(InstanceStateName::Running),
        InstanceStateName::Stopping => Some(InstanceStateName::Stopped),
        InstanceStateName::ShuttingDown => Some(InstanceStateName::Terminated),
        _ => None,
    }
}

/// Why an instance left `running` (EC2's StateReason codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UserInitiatedShutdown,
    UserInitiatedHibernate,
    InstanceInitiatedShutdown,
    ServerInternalError,
}

impl Reason {
    /// `StateReason`'s code and message.
    pub fn state_reason(self) -> (&'static str, &'static str) {
        match self {
            Reason::UserInitiatedShutdown => (
                "Client.UserInitiatedShutdown",
                "Client.UserInitiatedShutdown: User initiated shutdown",
            ),
            Reason::UserInitiatedHibernate => (
                "Client.UserInitiatedHibernate",
                "Client.UserInitiatedHibernate: User initiated hibernate",
            ),
            Reason::InstanceInitiatedShutdown => (
                "Client.InstanceInitiatedShutdown",
                "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
            ),
            Reason::ServerInternalError => (
                "Server.InternalError",
                "Server.InternalError: Internal error on launch",
            ),
        }
    }

    /// `StateTransitionReason`, e.g. `User initiated (2026-05-01 12:00:00 GMT)`.
    pub fn transition_reason(self, unix_seconds: u64) -> String {
        let when = ebs_blockdev::control::ids::format_rfc3339(unix_seconds, 0);
        let when = when.trim_end_matches(".000Z").replace('T', " ");
        match self {
            Reason::UserInitiatedShutdown | Reason::UserInitiatedHibernate => {
                format!("User initiated ({when} GMT)")
            }
            Reason::InstanceInitiatedShutdown => "Client.InstanceInitiatedShutdown".into(),
            Reason::ServerInternalError => "Server.InternalError".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStateName::*;

    const ID: &str = "i-0123456789abcdef0";

    #[test]
    fn states_have_ec2s_codes_and_names() {
        let codes: Vec<(u16, &str)> = InstanceStateName::ALL
            .iter()
            .map(|s| (s.code(), s.as_str()))
            .collect();
        assert_eq!(
            codes,
            [
                (0, "pending"),
                (16, "running"),
                (32, "shutting-down"),
                (48, "terminated"),
                (64, "stopping"),
                (80, "stopped")
            ]
        );
        for state in InstanceStateName::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(
            serde_json::to_value(InstanceState::from(ShuttingDown)).unwrap(),
            serde_json::json!({"Code": 32, "Name": "shutting-down"})
        );
    }

    #[test]
    fn the_transition_table() {
        let table = [
            (Action::Start, Stopped, Ok(Outcome::Begin(Pending))),
            (Action::Start, Running, Ok(Outcome::NoChange)),
            (Action::Start, Pending, Ok(Outcome::NoChange)),
            (Action::Start, Stopping, Err("started")),
            (Action::Start, Terminated, Err("started")),
            (Action::Start, ShuttingDown, Err("started")),
            (Action::Stop, Running, Ok(Outcome::Begin(Stopping))),
            (Action::Stop, Stopped, Ok(Outcome::NoChange)),
            (Action::Stop, Stopping, Ok(Outcome::NoChange)),
            (Action::Stop, Pending, Err("stopped")),
            (Action::Stop, Terminated, Err("stopped")),
            (Action::Stop, ShuttingDown, Err("stopped")),
            (Action::Hibernate, Running, Ok(Outcome::Begin(Stopping))),
            (Action::Hibernate, Pending, Err("stopped")),
            (Action::Reboot, Running, Ok(Outcome::Reboot)),
            (Action::Reboot, Stopped, Err("rebooted")),
            (Action::Reboot, Pending, Err("rebooted")),
            (Action::Reboot, Terminated, Err("rebooted")),
            (Action::Terminate, Running, Ok(Outcome::Begin(ShuttingDown))),
            (Action::Terminate, Stopped, Ok(Outcome::Begin(ShuttingDown))),
            (Action::Terminate, Pending, Ok(Outcome::Begin(ShuttingDown))),
            (
                Action::Terminate,
                Stopping,
                Ok(Outcome::Begin(ShuttingDown)),
            ),
            (Action::Terminate, ShuttingDown, Ok(Outcome::NoChange)),
            (Action::Terminate, Terminated, Ok(Outcome::NoChange)),
        ];
        for (action, state, expected) in table {
            let got = decide(ID, state, action, true);
            match expected {
                Ok(outcome) => assert_eq!(got, Ok(outcome), "{action:?} in {state}"),
                Err(verb) => {
                    let error = got.unwrap_err();
                    assert_eq!(
                        error.code,
                        ErrorCode::IncorrectInstanceState,
                        "{action:?} in {state}"
                    );
                    assert_eq!(
                        error.message,
                        format!(
                            "The instance '{ID}' is not in a state from which it can be {verb}."
                        )
                    );
                }
            }
        }
        let error = decide(ID, Running, Action::Hibernate, false).unwrap_err();
        assert_eq!(error.code, ErrorCode::UnsupportedOperation);
        assert_eq!(complete(Pending), Some(Running));
        assert_eq!(complete(Stopping), Some(Stopped));
        assert_eq!(complete(ShuttingDown), Some(Terminated));
        assert_eq!(complete(Running), None);
    }

    #[test]
    fn reasons_read_like_ec2s() {
        assert_eq!(
            Reason::UserInitiatedShutdown.state_reason(),
            (
                "Client.UserInitiatedShutdown",
                "Client.UserInitiatedShutdown: User initiated shutdown"
            )
        );
        // 2026-05-01T12:34:56Z
        assert_eq!(
            Reason::UserInitiatedShutdown.transition_reason(1_777_638_896),
            "User initiated (2026-05-01 12:34:56 GMT)"
        );
        assert_eq!(
            Reason::InstanceInitiatedShutdown.state_reason().0,
            "Client.InstanceInitiatedShutdown"
        );
    }
}
