"""Reading other agent frameworks' session stores (for now: Hermes' ``state.db``).

Nothing here writes to a foreign store unless a command says it does; see
:mod:`tether.interop.hermes`.
"""
