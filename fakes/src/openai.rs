//! A fake OpenAI-compatible chat-completions endpoint (to be written).
