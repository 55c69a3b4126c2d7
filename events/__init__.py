"""What the engine writes: event models, the msgpack codec, stream definitions, readers and the fill subscriber."""
