"""The guest agent: stdlib-only code that runs inside every sandbox, and its wire protocol."""
