//! End-to-end test of the users processor (and its welcome notifications) against the real
//! broker and schema registry.

mod common;

use std::time::Duration;

use common::*;
use tributary_processors::DomainApp;
use tributary_producers::Command;
use tributary_runtime::kafka::unique_name;
use tributary_schemas::domain::*;
use tributary_schemas::types::Envelope;

fn user_cmd(user_id: &str, payload: impl Into<UserCommand>) -> Command {
    Command::Users(Envelope::new(user_id, unique_name("flow"), payload))
}

fn register(user_id: &str, email: &str) -> Command {
    user_cmd(
        user_id,
        RegisterUser {
            user_id: user_id.into(),
            email: email.into(),
            display_name: format!("User {user_id}"),
            locale: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_are_unique_and_commands_after_registration_keep_their_order() {
    let mut p = Pipeline::new("users", Duration::from_secs(30)).await;
    p.start(DomainApp::Users);
    p.start(DomainApp::Notifications);

    // Sent right after the registration: it waits for the email claim, then applies.
    p.send(register("u-1", "Ann@Example.com")).await;
    p.send(user_cmd(
        "u-1",
        UpdateProfile {
            user_id: "u-1".into(),
            display_name: Some("Ann".into()),
            avatar_url: None,
            locale: Some("fr-FR".into()),
        },
    ))
    .await;
    p.send(user_cmd(
        "u-1",
        StartSession {
            session_id: "s-1".into(),
            user_id: "u-1".into(),
            user_agent: None,
        },
    ))
    .await;
    let mut users = p.reader::<UserEvent>(p.cfg.topics.events_users());
    users.until("u-1's registration", |e| e.len() >= 3).await;
    // The same address, spelled differently, for another user; and a user that never registered.
    p.send(register("u-2", " ann@example.COM ")).await;
    p.send(user_cmd(
        "u-3",
        EndSession {
            session_id: "s-1".into(),
            user_id: "u-3".into(),
        },
    ))
    .await;
    p.send(user_cmd(
        "u-1",
        EndSession {
            session_id: "s-1".into(),
            user_id: "u-1".into(),
        },
    ))
    .await;

    let events = users
        .until("u-1's session end", |e| e.len() >= 4)
        .await
        .to_vec();
    let kinds: Vec<(&str, &str, i64)> = events
        .iter()
        .map(|e| {
            use tributary_schemas::types::TopicPayload;
            (e.aggregate_id.as_str(), e.payload.branch_name(), e.sequence)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("u-1", "UserRegistered", 1),
            ("u-1", "ProfileUpdated", 2),
            ("s-1", "SessionStarted", 1),
            ("s-1", "SessionEnded", 2),
        ]
    );
    match &events[1].payload {
        UserEvent::ProfileUpdated(p) => {
            assert_eq!(p.display_name, "Ann");
            assert_eq!(p.locale.as_deref(), Some("fr-FR"));
        }
        other => panic!("unexpected {other:?}"),
    }

    let mut rejections = p.reader::<RejectionEvent>(p.cfg.topics.events_rejections());
    let rejections = rejections
        .until("two rejections", |e| e.len() >= 2)
        .await
        .to_vec();
    let mut got: Vec<(String, RejectionReason)> = rejections
        .iter()
        .map(|e| {
            let RejectionEvent::CommandRejected(r) = &e.payload;
            (r.command_type.clone(), r.reason)
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("EndSession".to_string(), RejectionReason::NotFound),
            ("RegisterUser".to_string(), RejectionReason::AlreadyExists),
        ]
    );

    let mut notes = p.reader::<NotificationEvent>(p.cfg.topics.events_notifications());
    notes.until("the welcome", |e| !e.is_empty()).await;
    // Long enough for a (wrong) second welcome to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let notes = notes.until("nothing more", |_| true).await.to_vec();
    assert_eq!(notes.len(), 1, "one welcome, for u-1 only");
    let NotificationEvent::NotificationSent(n) = &notes[0].payload;
    assert_eq!(
        (n.user_id.as_str(), n.template_id.as_str()),
        ("u-1", "welcome")
    );
    p.stop_all().await;
}
