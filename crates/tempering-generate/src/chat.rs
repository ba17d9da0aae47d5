//! Conversations to prompt text: checks the roles, then renders with the model's chat template.
//! Knows nothing of tokens or sampling.

use tempering_model::{ChatMessage, ChatTemplate};

use crate::error::{GenError, Result};

/// Roles a message may have.
pub const KNOWN_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The prompt text for `messages`, with the assistant's turn opened when `add_generation_prompt`.
pub fn render_chat(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String> {
    if let Some((index, m)) = messages
        .iter()
        .enumerate()
        .find(|(_, m)| !KNOWN_ROLES.contains(&m.role.as_str()))
    {
        return Err(GenError::UnknownRole {
            index,
            role: m.role.clone(),
        });
    }
    Ok(template.render(messages, add_generation_prompt)?)
}
