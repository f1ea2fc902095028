"""The loop around the pure decide step: observe (gather one bundle of observations from the
ports), decide (:func:`mlcd.domain.decide.decide`), execute (carry out the intents). The
operator's handlers and ``mlcd run`` both drive it."""
