//! The licence to open a session: only [`super::Gate::permit`] makes a
//! [`Permit`], and only when policy allows. It carries what was allowed (who,
//! which action, on what, in which circumstances) and the decision's audit
//! record, still on its way to the store. `Sessions::open` takes a permit by
//! value and opens nothing until that record is durable, so no room can reach
//! a target without passing the gate, and no session outlives the grant it
//! was opened under unnoticed (policy changes re-decide the same request).

use crate::audit::Pending;
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::principal::Principal;

/// Policy allowed `grant`; the `policy.decision` record is pending.
/// Deliberately neither `Clone` nor constructible outside `policy`.
pub struct Permit {
    grant: Grant,
    decision: Pending,
}

/// What a [`Permit`] allowed: the request as the gate decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub principal: Principal,
    pub action: Action,
    pub resource: Resource,
    pub context: RequestContext,
    /// The policies that allowed it.
    pub policies: Vec<String>,
}

impl Permit {
    pub(super) fn new(grant: Grant, decision: Pending) -> Self {
        Self { grant, decision }
    }

    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// Spends the permit: the grant, and the decision record to wait for
    /// before anything reaches the target.
    pub fn into_parts(self) -> (Grant, Pending) {
        (self.grant, self.decision)
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}
