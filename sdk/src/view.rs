//! What a plugin sees: typed views of requests, answers and stream windows.

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `system` instructions from the application.
    System,
    /// `developer` instructions (OpenAI's newer name for system).
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
    /// A role tollgate does not know.
    Other,
}

impl Role {
    /// The lower-case name used in manifests and configs (`"user"`, `"tool"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Other => "other",
        }
    }

    /// Parses a lower-case role name; unknown names are [`Role::Other`].
    pub fn parse(name: &str) -> Role {
        match name {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" | "function" => Role::Tool,
            _ => Role::Other,
        }
    }
}

/// One piece of text. `id` names the part in an [`Edit`](crate::Edit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextPart {
    /// Unique within one call.
    pub id: u32,
    /// The text.
    pub text: String,
}

/// A message: role and text parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The optional author name.
    pub name: Option<String>,
    /// Its text parts, in order.
    pub parts: Vec<TextPart>,
}

impl Message {
    /// The message's text, parts joined with newlines.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self.parts.iter().map(|p| p.text.as_str()).collect();
        texts.join("\n")
    }
}

/// A tool the client offers the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// The function name.
    pub name: String,
    /// Its description, if any.
    pub description: Option<String>,
}

/// The virtual key that made the call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The key id (`key_...`).
    pub key_id: String,
    /// The key's human name.
    pub key_name: String,
    /// The key's team.
    pub team: Option<String>,
    /// The key's metadata: strings as they are, other values as JSON text.
    pub metadata: Vec<(String, String)>,
}

/// A request on its way to the provider (the `request` phase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The model name the client sent.
    pub model: String,
    /// The endpoint path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools offered to the model.
    pub tools: Vec<Tool>,
    /// The request's `metadata` object and `user` field: strings as they are, other values as
    /// JSON text.
    pub metadata: Vec<(String, String)>,
    /// The calling key.
    pub caller: Caller,
}

/// A complete answer (the `response` phase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The model name the client sent.
    pub model: String,
    /// The endpoint path.
    pub endpoint: String,
    /// One message per choice or output item.
    pub messages: Vec<Message>,
    /// The calling key.
    pub caller: Caller,
}

/// A sliding window over one streamed answer (the `stream` phase).
///
/// `window.text` holds the tail of the answer not yet released to the client followed by the
/// text that just arrived; a value split across two provider chunks is whole here. Rewrite
/// `window.id` to mask. The first `seen` bytes were already inspected by the previous call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamWindow {
    /// The model name the client sent.
    pub model: String,
    /// The endpoint path.
    pub endpoint: String,
    /// The choice (or output item) this window belongs to.
    pub index: u32,
    /// The window text.
    pub window: TextPart,
    /// Bytes of `window.text` already inspected by the previous call.
    pub seen: usize,
    /// Nothing more will arrive for this choice.
    pub last: bool,
    /// The calling key.
    pub caller: Caller,
}

fn push_message(messages: &mut Vec<Message>, role: Role, text: &str) {
    let id = messages
        .iter()
        .flat_map(|m| m.parts.iter().map(|p| p.id + 1))
        .max()
        .unwrap_or(0);
    messages.push(Message {
        role,
        name: None,
        parts: vec![TextPart {
            id,
            text: text.to_string(),
        }],
    });
}

fn all_parts(messages: &[Message]) -> impl Iterator<Item = (Role, &TextPart)> {
    messages
        .iter()
        .flat_map(|m| m.parts.iter().map(move |p| (m.role, p)))
}

impl Request {
    /// A request for `model` on `/v1/chat/completions` with no messages (for tests).
    pub fn new(model: &str) -> Self {
        Request {
            model: model.to_string(),
            endpoint: "/v1/chat/completions".to_string(),
            ..Request::default()
        }
    }

    /// Adds a message with one text part (ids are assigned in order).
    pub fn with_message(mut self, role: Role, text: &str) -> Self {
        push_message(&mut self.messages, role, text);
        self
    }

    /// Adds a tool.
    pub fn with_tool(mut self, name: &str, description: &str) -> Self {
        self.tools.push(Tool {
            name: name.to_string(),
            description: Some(description.to_string()),
        });
        self
    }

    /// Sets the calling key's team.
    pub fn with_team(mut self, team: &str) -> Self {
        self.caller.team = Some(team.to_string());
        self
    }

    /// Every text part with the role of its message.
    pub fn parts(&self) -> impl Iterator<Item = (Role, &TextPart)> {
        all_parts(&self.messages)
    }

    /// The text of part `id`, if it exists.
    pub fn part(&self, id: u32) -> Option<&str> {
        self.parts()
            .find(|(_, p)| p.id == id)
            .map(|(_, p)| p.text.as_str())
    }
}

impl Response {
    /// An answer from `model` with no messages (for tests).
    pub fn new(model: &str) -> Self {
        Response {
            model: model.to_string(),
            endpoint: "/v1/chat/completions".to_string(),
            ..Response::default()
        }
    }

    /// Adds an assistant message with one text part.
    pub fn with_text(mut self, text: &str) -> Self {
        push_message(&mut self.messages, Role::Assistant, text);
        self
    }

    /// Every text part with the role of its message.
    pub fn parts(&self) -> impl Iterator<Item = (Role, &TextPart)> {
        all_parts(&self.messages)
    }

    /// The text of part `id`, if it exists.
    pub fn part(&self, id: u32) -> Option<&str> {
        self.parts()
            .find(|(_, p)| p.id == id)
            .map(|(_, p)| p.text.as_str())
    }
}

impl StreamWindow {
    /// A window holding `text`, none of it seen before (for tests).
    pub fn new(model: &str, text: &str) -> Self {
        StreamWindow {
            model: model.to_string(),
            endpoint: "/v1/chat/completions".to_string(),
            window: TextPart {
                id: 0,
                text: text.to_string(),
            },
            ..StreamWindow::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_parts_get_unique_ids_in_order() {
        let request = Request::new("m")
            .with_message(Role::System, "s")
            .with_message(Role::User, "u")
            .with_tool("f", "d")
            .with_team("t");
        let ids: Vec<u32> = request.parts().map(|(_, p)| p.id).collect();
        assert_eq!(ids, [0, 1]);
        assert_eq!(request.part(1), Some("u"));
        assert_eq!(request.caller.team.as_deref(), Some("t"));
        assert_eq!(Response::new("m").with_text("a").part(0), Some("a"));
    }

    #[test]
    fn roles_round_trip_their_names() {
        for role in [
            Role::System,
            Role::Developer,
            Role::User,
            Role::Assistant,
            Role::Tool,
        ] {
            assert_eq!(Role::parse(role.as_str()), role);
        }
        assert_eq!(Role::parse("narrator"), Role::Other);
    }
}
