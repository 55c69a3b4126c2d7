"""The interface between jetbook's machinery and an application (docs/FRAMEWORK.md).

`framework.app`: what an application declares (`App`, `Streams`) and what the
machinery asks of it (`Decider`, `Core`, `SqliteProjection`).
`framework.pure`: a decider made of pure functions (`PureDecider`).
`framework.streams`: an application's two streams, with the exchange's settings.
"""
