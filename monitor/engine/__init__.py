"""The decision path per event: the event contract, column extraction, model admission,
the engine and the health state machine.
"""
