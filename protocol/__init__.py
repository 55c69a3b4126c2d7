"""The wire vocabulary every role shares: subjects, streams, broker errors, reject reasons, codec."""
