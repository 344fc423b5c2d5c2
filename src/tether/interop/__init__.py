"""Other systems' sessions: Hermes' ``state.db`` (read, census, repair) and the
OpenAI Agents SDK's ``Session`` backed by tether.

Nothing here writes to a foreign store unless a command says it does; see
:mod:`tether.interop.hermes` and :mod:`tether.interop.openai_agents`.
"""
