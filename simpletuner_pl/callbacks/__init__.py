"""Lightning callbacks of a run (`factory.build_callbacks` chooses them) and the checks of the models they load."""
