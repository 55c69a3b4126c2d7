"""What clients send: command models, their validation, subject names, and the publishing client."""
