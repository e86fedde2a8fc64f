//! Which caller may send which command, and on whose behalf.
//!
//! The gateway is the pipeline's public door, so it accepts by allow-list: a command branch
//! not named below is internal. Internal commands are the saga's own steps (stock
//! reservations, payment authorisation, capture and refund): only a principal with the
//! `internal` role may send them, because one of them from outside moves stock or money
//! without an order behind it.

use super::auth::Principal;

/// What a command needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any authenticated user, for themselves.
    Public,
    /// The catalogue: `admin` (or `internal`).
    Admin,
    /// The saga's steps: `internal` only.
    Internal,
}

/// Commands any user may send about themselves: orders, their account, sessions.
pub const PUBLIC: [&str; 7] = [
    "PlaceOrder",
    "CancelOrder",
    "RegisterUser",
    "UpdateProfile",
    "UpdatePreferences",
    "StartSession",
    "EndSession",
];

/// The catalogue commands.
pub const ADMIN: [&str; 3] = ["AddProduct", "RestockProduct", "UpdateProduct"];

/// What sending the command branch `name` needs.
pub fn access(name: &str) -> Access {
    if PUBLIC.contains(&name) {
        Access::Public
    } else if ADMIN.contains(&name) {
        Access::Admin
    } else {
        Access::Internal
    }
}

/// Whether `principal` may send `name`.
pub fn allows(principal: &Principal, name: &str) -> bool {
    match access(name) {
        Access::Public => true,
        Access::Admin => principal.admin || principal.internal,
        Access::Internal => principal.internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_schemas::domain::{InventoryCommand, OrderCommand, PaymentCommand, UserCommand};
    use tributary_schemas::types::TopicPayload;

    /// Every branch of every command schema, read from the schema texts themselves.
    fn branches() -> Vec<String> {
        let mut out = Vec::new();
        for text in [
            UserCommand::SCHEMA_TEXT,
            InventoryCommand::SCHEMA_TEXT,
            OrderCommand::SCHEMA_TEXT,
            PaymentCommand::SCHEMA_TEXT,
        ] {
            let schema: serde_json::Value = serde_json::from_str(text).unwrap();
            let payload = schema["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == "payload")
                .unwrap();
            for branch in payload["type"].as_array().unwrap() {
                if let Some(name) = branch["name"].as_str() {
                    out.push(name.to_string());
                }
            }
        }
        out
    }

    #[test]
    fn the_saga_steps_are_internal_and_the_lists_name_real_commands() {
        let all = branches();
        for name in PUBLIC.iter().chain(ADMIN.iter()) {
            assert!(
                all.iter().any(|b| b == name),
                "`{name}` is no command branch"
            );
        }
        let internal: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|b| access(b) == Access::Internal)
            .collect();
        assert_eq!(
            internal,
            [
                "ReserveStock",
                "ReleaseStock",
                "CommitStock",
                "AuthorizePayment",
                "CapturePayment",
                "RefundPayment"
            ],
            "a new command branch is internal until listed as public or admin"
        );
    }

    #[test]
    fn roles_decide() {
        let user = Principal {
            id: "u".into(),
            admin: false,
            internal: false,
        };
        let admin = Principal {
            admin: true,
            ..user.clone()
        };
        let internal = Principal {
            internal: true,
            ..user.clone()
        };
        assert!(allows(&user, "PlaceOrder"));
        assert!(!allows(&user, "RestockProduct"));
        assert!(allows(&admin, "RestockProduct"));
        assert!(!allows(&admin, "RefundPayment"));
        assert!(allows(&internal, "RefundPayment"));
        assert!(!allows(&user, "SomethingNew"));
    }
}
