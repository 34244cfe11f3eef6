"""The node side: agent, RQ task, launcher and GPU backends. May import app; the app never imports this."""
