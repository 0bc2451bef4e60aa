//! Channels that deliver due touches. So far the outbox file, the default for the demo and
//! dry runs (issue 6); Klaviyo, Twilio, Postmark and signed webhooks come next (issue 7).

pub mod outbox;
