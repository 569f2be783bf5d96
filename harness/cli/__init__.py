"""cathouse-branch: commands, arguments, context, doctor, init."""
