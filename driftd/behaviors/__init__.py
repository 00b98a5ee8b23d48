"""driftd.behaviors: users' behaviours whose credibility decays with time.

:mod:`~driftd.behaviors.rules` holds the pure decision rules (decay, conflict,
reinforce, supersede, drift signals); :mod:`~driftd.behaviors.store` keeps the
behaviours in Chroma and applies the rules' decisions.
"""
