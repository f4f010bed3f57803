//! A fake OpenClaw gateway (to be written).
