//! Anthropic Messages: the two hub converters for requests and answers.

mod request;
mod response;

pub(crate) use request::{from_hub as request_from_hub, to_hub as request_to_hub};
pub(crate) use response::{
    completion_id, finish_reason, from_hub as answer_from_hub, message_id, stop_reason,
    to_hub as answer_to_hub,
};
