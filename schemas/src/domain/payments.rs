//! Payment authorization, capture, refund and decline (`commands.payments`,
//! `events.payments`).

use serde::{Deserialize, Serialize};

use super::topic_payload;

/// Why a payment was declined. Readers that do not know a newer symbol read `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeclineReason {
    /// Not enough funds.
    InsufficientFunds,
    /// The card has expired.
    CardExpired,
    /// The provider suspects fraud.
    FraudSuspected,
    /// A spending limit would be exceeded.
    LimitExceeded,
    /// Any other reason.
    Other,
}

/// Authorize (hold) an amount for an order (saga step 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizePayment {
    /// Id of the new payment, chosen by the caller so retries are idempotent.
    pub payment_id: String,
    /// Id of the order the payment is for.
    pub order_id: String,
    /// Id of the paying user.
    pub user_id: String,
    /// Amount in minor units of `currency`.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// Capture (collect) a previously authorized amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturePayment {
    /// Id of the payment.
    pub payment_id: String,
    /// Id of the order the payment is for.
    pub order_id: String,
    /// Code of the authorization being captured.
    pub authorization_code: String,
    /// Amount in minor units of `currency`.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// Refund a captured amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPayment {
    /// Id of the payment.
    pub payment_id: String,
    /// Id of the order the payment is for.
    pub order_id: String,
    /// Amount in minor units of `currency`.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Free-text reason for the refund, if any.
    pub reason: Option<String>,
}

/// An amount was authorized (held) for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    /// Id of the payment.
    pub payment_id: String,
    /// Id of the order the payment is for.
    pub order_id: String,
    /// Id of the paying user.
    pub user_id: String,
    /// Amount in minor units of `currency`.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Code the payment provider gave the authorization.
    pub authorization_code: String,
}

/// An authorization was declined; the saga compensates the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    /// Id of the payment.
    pub payment_id: String,
    /// Id of the order the payment is for.
    pub order_id: String,
    /// Id of the paying user.
    pub user_id: String,
    /// Amount in minor units of `currency`.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Why the payment was declined.
    pub reason: DeclineReason,
    /// The payment provider's message, if any.
    pub detail: Option<String>,
}

/// An authorized amount was captured (collected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    /// Id of the payment.
    pub payment_id: String,
    /// Id of the order the payment is for.
    pub order_id: String,
    /// Code of the authorization that was captured.
    pub authorization_code: String,
    /// Amount in minor units of `currency`.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// A captured amount was refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// Id of the payment.
    pub payment_id: String,
    /// Id of the order the payment is for.
    pub order_id: String,
    /// Amount in minor units of `currency`.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Free-text reason for the refund, if any.
    pub reason: Option<String>,
}

topic_payload! {
    /// Payload of `commands.payments`.
    pub enum PaymentCommand for "commands.payments" {
        AuthorizePayment,
        CapturePayment,
        RefundPayment,
    }
}

topic_payload! {
    /// Payload of `events.payments`.
    pub enum PaymentEvent for "events.payments" {
        PaymentAuthorized,
        PaymentDeclined,
        PaymentCaptured,
        PaymentRefunded,
    }
}
