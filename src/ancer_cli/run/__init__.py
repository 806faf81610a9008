"""One home for a run that writes a results file (certify, predict, recertify, attack):

- :mod:`.spec` -- what a run smooths as its options give it, and the one mapping to and from
  its record;
- :mod:`.commit` -- commit, then draw: the hashes of model, thetas and inputs, and the seed of
  each segment of inputs;
- :mod:`.lock` -- one run at a time on an output;
- :mod:`.rows` -- the rows as they are written: flushed, resumable, sharded, merged;
- :mod:`.skeleton` -- the start and the end every such run shares;
- :mod:`.certificates` -- rows that state certificates, the memory pass over them, their totals.
"""
