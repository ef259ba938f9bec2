"""The whole local loop as one command: `protege up`, `protege down`, `protege demo`."""
