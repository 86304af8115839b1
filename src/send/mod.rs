//! Mail leaving: the durable outbound queue, the delivery worker (MX
//! lookup, RFC 5321 5.1 and RFC 7505; the SMTP client; retries; RFC 3464
//! bounces; the relay) and `pimail sendmail`, the local submission
//! command. Submission on 587/465 hands its mail here from `receive`.

pub mod delivery;
pub mod queue;
#[cfg(test)]
mod queue_crash;
pub mod sendmail;
pub mod submit;
