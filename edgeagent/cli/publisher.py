"""placeholder: registered later."""


def register(sub):
    pass
