"""The pure matching core (book, decide/evolve) and the engine service that runs it on JetStream."""
